"""Build the example workflows in workflows/ (ComfyUI UI format, workflow JSON v0.4) from compact descriptions.

    python -m tools.make_workflows            # rewrite workflows/*.json
    python -m tools.make_workflows --check    # exit 1 if a committed file differs from what this script builds

widgets_values follow each node's INPUT_TYPES order (required, then optional), one value per widget input
(INT, FLOAT, STRING, BOOLEAN, combo), plus the frontend's "control_after_generate" value right after an INT that has
one (control_after_generate true in its options, or, where the options do not say, named seed / noise_seed, as
ComfyUI's frontend does). A widget input
fed by a link (e.g. prompts from CoRe² Toy Prompt List) keeps its value and is listed in the node's inputs with
"widget": {"name": ...}, as the frontend writes it.

Node schemas: this pack's nodes come from their INPUT_TYPES (the pack is imported as ComfyUI would import it).
ComfyUI's built-in nodes used here are declared in builtins(): the schema the workflow files are written with, the
one every supported ComfyUI (late 2024 to current) offers, so the files are the same whichever ComfyUI builds them.
Newer cores may add to a built-in node (SaveImage got an IMAGE output in 2026): compat_problems() accepts inputs and
outputs appended at the end (links and widget values address earlier slots) and refuses anything else. The running
ComfyUI's own node classes are checked that way by --check where it has nodes.py (live_builtin_specs()), and a live
server's /object_info by tests/test_workflows.py with a full ComfyUI.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
PACK_NAME = "comfyui_core2"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_NAMES = ("seed", "noise_seed")  # the frontend adds control_after_generate to these INT widgets
FILES = "FILES"  # marks a combo whose choices are the user's model files (not checkable without those files)
FRONTEND_ONLY = ("Note", "MarkdownNote")  # node types that exist only in the frontend (not in /object_info)


def load_pack():
    """Import the pack the way ComfyUI does (a package named after its folder), after making ComfyUI importable."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools import comfy_env

    comfy_env.activate()
    return comfy_env.load_pack(PACK_NAME)


def _samplers():
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def builtins() -> dict:
    """ComfyUI built-in nodes used by the workflows: inputs as (name, type, options) in INPUT_TYPES order (the
    "optional" flag marks optional inputs), outputs as (name, type). Combo types are lists; FILES = model-file combos."""
    samplers, schedulers = _samplers()
    seed = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True})
    size = {"min": 16, "max": 16384, "step": 8}
    return {
        "CheckpointLoaderSimple": ([("ckpt_name", FILES, {})], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
        "UNETLoader": ([("unet_name", FILES, {}), ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {})],
                       [("MODEL", "MODEL")]),
        "DualCLIPLoader": ([("clip_name1", FILES, {}), ("clip_name2", FILES, {}),
                            ("type", ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"], {}),
                            ("device", ["default", "cpu"], {"optional": True})], [("CLIP", "CLIP")]),
        "VAELoader": ([("vae_name", FILES, {})], [("VAE", "VAE")]),
        "CLIPTextEncode": ([("text", "STRING", {"multiline": True}), ("clip", "CLIP", {})], [("CONDITIONING", "CONDITIONING")]),
        "EmptyLatentImage": ([("width", "INT", {"default": 512, **size}), ("height", "INT", {"default": 512, **size}),
                              ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096})], [("LATENT", "LATENT")]),
        "EmptySD3LatentImage": ([("width", "INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                                 ("height", "INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                                 ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096})], [("LATENT", "LATENT")]),
        "ModelSamplingSD3": ([("model", "MODEL", {}), ("shift", "FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0})],
                             [("MODEL", "MODEL")]),
        "ConditioningZeroOut": ([("conditioning", "CONDITIONING", {})], [("CONDITIONING", "CONDITIONING")]),
        "FluxGuidance": ([("conditioning", "CONDITIONING", {}), ("guidance", "FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0})],
                         [("CONDITIONING", "CONDITIONING")]),
        "KSampler": ([("model", "MODEL", {}), ("seed", *seed), ("steps", "INT", {"default": 20, "min": 1, "max": 10000}),
                      ("cfg", "FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}), ("sampler_name", samplers, {}),
                      ("scheduler", schedulers, {}), ("positive", "CONDITIONING", {}), ("negative", "CONDITIONING", {}),
                      ("latent_image", "LATENT", {}), ("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})],
                     [("LATENT", "LATENT")]),
        "VAEDecode": ([("samples", "LATENT", {}), ("vae", "VAE", {})], [("IMAGE", "IMAGE")]),
        "SaveImage": ([("images", "IMAGE", {}), ("filename_prefix", "STRING", {"default": "ComfyUI"})], []),
        "PreviewImage": ([("images", "IMAGE", {})], []),
        "Note": ([("text", "STRING", {"multiline": True})], []),
    }


def compat_problems(name: str, declared, live_inputs: list, live_outputs: list) -> list:
    """What breaks workflows written with the declared schema of built-in node `name` (from builtins()) on a ComfyUI
    whose node has live_inputs [(name, spec, optional)] (frontend order) and live_outputs [type]. Inputs and outputs
    added after the declared ones are fine when the added inputs are optional."""
    ins, outs = declared
    problems = []
    names = [n for n, _, _ in live_inputs]
    if names[:len(ins)] != [n for n, _, _ in ins]:
        problems.append(f"{name}: inputs {names} do not start with the declared {[n for n, _, _ in ins]}")
    problems += [f"{name}: new required input {n}" for n, _, opt in live_inputs[len(ins):] if not opt]
    for (n, spec, opt), (_, t, o) in zip(live_inputs, ins):
        if opt != bool(o.get("optional")):
            problems.append(f"{name}.{n}: optional is {opt}, declared {bool(o.get('optional'))}")
        live_t, live_o = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
        if t == FILES:
            ok = isinstance(live_t, (list, tuple)) or live_t == "COMBO"
        elif isinstance(t, list):
            choices = live_t if isinstance(live_t, (list, tuple)) else live_o.get("options") or []
            ok = set(t) <= set(choices)
        else:
            ok = live_t == t
        if not ok:
            problems.append(f"{name}.{n}: type {str(live_t)[:80]} does not fit the declared {str(t)[:80]}")
    declared_outs = [t for _, t in outs]
    if list(live_outputs)[:len(declared_outs)] != declared_outs:
        problems.append(f"{name}: outputs {list(live_outputs)} do not start with the declared {declared_outs}")
    return problems


def live_builtin_specs() -> dict:
    """The running ComfyUI's own classes of the built-in nodes in builtins() that its nodes.py defines, as
    {name: (inputs [(name, spec, optional)], output types)}; empty where there is no nodes.py (notcomfy)."""
    try:
        import nodes
    except ImportError:
        return {}
    out = {}
    for name in builtins():
        cls = nodes.NODE_CLASS_MAPPINGS.get(name)
        if cls is None or not hasattr(cls, "INPUT_TYPES"):
            continue
        it = cls.INPUT_TYPES()
        ins = [(n, spec, section == "optional") for section in ("required", "optional")
               for n, spec in (it.get(section) or {}).items()]
        out[name] = (ins, list(cls.RETURN_TYPES))
    return out


def builtin_problems() -> list:
    """compat_problems of every built-in node against the running ComfyUI's classes (none without nodes.py)."""
    declared = builtins()
    return [p for name, (ins, outs) in live_builtin_specs().items() for p in compat_problems(name, declared[name], ins, outs)]


# Files the workflows name that can be downloaded: file name -> (url, ComfyUI model folder). Every node whose widget
# names one carries it in properties.models, so the frontend's missing-models dialog lists it with its source and
# folder (the dialog downloads only .safetensors/.sft files; it names the .pth ones and where they go).
MODEL_FILES = {
    "sd_xl_base_1.0.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "checkpoints"),
    "sd3.5_large_fp8_scaled.safetensors": (
        "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/sd3.5_large_fp8_scaled.safetensors",
        "checkpoints"),
    "flux1-dev.safetensors": ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
                              "diffusion_models"),
    "ae.safetensors": ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors", "vae"),
    "clip_l.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                           "text_encoders"),
    "t5xxl_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    "sdxl_noise_model.pth": ("https://huggingface.co/sst12345/CoRe2/resolve/main/weights/sdxl_noise_model.pth", "core2"),
    "sd35_noise_model.pth": ("https://huggingface.co/sst12345/CoRe2/resolve/main/weights/sd35_noise_model.pth", "core2"),
}


def model_entries(values: list) -> list:
    """properties.models of a node with these widget values: {name, url, directory} per downloadable file it names."""
    return [{"name": v, "url": MODEL_FILES[v][0], "directory": MODEL_FILES[v][1]}
            for v in values if isinstance(v, str) and v in MODEL_FILES]


# our combos whose choices depend on the user's files / datasets
OUR_FILE_COMBOS = {("CoRe2LoadWeakModel", "weak_model_name"), ("CoRe2Reflect", "dataset"), ("CoRe2CollectBatch", "prompts_file")}


@dataclass
class Input:
    name: str
    type: object  # str, or a list of choices (combo), or FILES
    opts: dict
    optional: bool = False

    @property
    def is_widget(self) -> bool:
        return isinstance(self.type, list) or self.type == FILES or (self.type in WIDGET_TYPES and not self.opts.get("forceInput"))

    @property
    def has_control(self) -> bool:
        # the frontend's rule: control_after_generate ?? (name is seed / noise_seed); False leaves the widget out
        return self.type == "INT" and bool(self.opts.get("control_after_generate", self.name in CONTROL_NAMES))

    @property
    def link_type(self) -> str:
        if isinstance(self.type, list) or self.type == FILES:
            return "COMBO"
        return self.type


@dataclass
class Schema:
    inputs: list
    outputs: list  # (name, type)

    def input(self, name) -> Input:
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(name)

    @property
    def widgets(self) -> list:
        return [i for i in self.inputs if i.is_widget]


def schemas() -> dict:
    """Schema of every node type the workflows may use: the pack's nodes and BUILTINS."""
    pack = load_pack()
    out = {}
    for name, (ins, outs) in builtins().items():
        out[name] = Schema([Input(n, t, {k: v for k, v in o.items() if k != "optional"}, bool(o.get("optional")))
                            for n, t, o in ins], list(outs))
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        it = cls.INPUT_TYPES()
        ins = []
        for section in ("required", "optional"):
            for n, spec in (it.get(section) or {}).items():
                t = spec[0]
                o = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if (name, n) in OUR_FILE_COMBOS:
                    t = FILES
                ins.append(Input(n, list(t) if isinstance(t, (list, tuple)) else t, o, section == "optional"))
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        out[name] = Schema(ins, list(zip(names, cls.RETURN_TYPES)))
    return out


def default_value(inp: Input):
    if "default" in inp.opts:
        return inp.opts["default"]
    if isinstance(inp.type, list):
        return inp.type[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(inp.type, "")


# ---------------------------------------------------------------------------------------------------------------
# building UI-format graphs


@dataclass(frozen=True)
class Out:
    node: "Node"
    slot: int


@dataclass(eq=False)
class Node:
    id: int
    type: str
    pos: tuple
    widgets: dict
    links: dict  # input name -> Out
    title: str | None = None
    size: tuple | None = None

    def out(self, name_or_index=0) -> Out:
        return Out(self, name_or_index)


@dataclass
class Workflow:
    name: str
    note: str
    nodes: list = field(default_factory=list)

    def add(self, type_: str, pos, title=None, size=None, **kw) -> Node:
        links = {k: v for k, v in kw.items() if isinstance(v, Out)}
        widgets = {k: v for k, v in kw.items() if not isinstance(v, Out)}
        n = Node(len(self.nodes) + 2, type_, tuple(pos), widgets, links, title, size)  # id 1 is the note
        self.nodes.append(n)
        return n

    def build(self, sch: dict) -> dict:
        note = {"id": 1, "type": "Note", "pos": [20, 20], "size": [420, 260], "flags": {}, "order": 0, "mode": 0,
                "inputs": [], "outputs": [], "title": "About this workflow", "properties": {"text": ""},
                "widgets_values": [self.note], "color": "#432", "bgcolor": "#653"}
        ui_nodes, links = [note], []
        order = _topological(self.nodes)
        out_links: dict = {}
        for n in self.nodes:
            s = sch[n.type]
            for iname in list(n.links) + list(n.widgets):
                s.input(iname)  # KeyError on a misspelt input
        for n in self.nodes:
            s = sch[n.type]
            inputs, values = [], []
            for inp in s.inputs:
                src = n.links.get(inp.name)
                if inp.is_widget:
                    v = n.widgets.get(inp.name, default_value(inp))
                    values.append(v)
                    if inp.has_control:
                        values.append(n.widgets.get(inp.name + "__control", "fixed"))
                    if src is None:
                        continue
                if src is None and inp.optional:
                    continue
                entry = {"name": inp.name, "type": inp.link_type, "link": None}
                if inp.is_widget:
                    entry["widget"] = {"name": inp.name}
                if src is not None:
                    slot = src.slot if isinstance(src.slot, int) else [o[0] for o in sch[src.node.type].outputs].index(src.slot)
                    ltype = sch[src.node.type].outputs[slot][1]
                    lid = len(links) + 1
                    links.append([lid, src.node.id, slot, n.id, None, ltype])
                    entry["link"] = lid
                    out_links.setdefault((src.node.id, slot), []).append(lid)
                inputs.append(entry)
            # link inputs first, then widget inputs fed by links (the classic frontend's "convert widget to input")
            inputs = [e for e in inputs if "widget" not in e] + [e for e in inputs if "widget" in e]
            for k, e in enumerate(inputs):
                if e["link"] is not None:
                    links[e["link"] - 1][4] = k
            rows = len(inputs) + len(values) + 2
            node = {"id": n.id, "type": n.type, "pos": list(n.pos),
                    "size": list(n.size or (320, 30 + 24 * max(rows, len(s.outputs) + 1))), "flags": {},
                    "order": order.index(n) + 1, "mode": 0, "inputs": inputs, "outputs": [], "properties":
                    {"Node name for S&R": n.type}, "widgets_values": values}
            if model_entries(values):
                node["properties"]["models"] = model_entries(values)
            if n.title:
                node["title"] = n.title
            ui_nodes.append(node)
        for node, n in zip(ui_nodes[1:], self.nodes):
            node["outputs"] = [{"name": oname, "type": otype, "links": out_links.get((n.id, k), []), "slot_index": k}
                               for k, (oname, otype) in enumerate(sch[n.type].outputs)]
        return {"last_node_id": max(x["id"] for x in ui_nodes), "last_link_id": len(links), "nodes": ui_nodes,
                "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}


def _topological(nodes: list) -> list:
    done, out = set(), []

    def visit(n):
        if n.id in done:
            return
        for src in n.links.values():
            visit(src.node)
        done.add(n.id)
        out.append(n)

    for n in nodes:
        visit(n)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the workflows

NEG = "blurry, low quality, deformed, watermark, text"
POS = "a photo of a red fox sitting in a snowy forest at sunrise, detailed fur, soft light"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
SCENES_TRAIN_STEPS = 3000  # workflow 10: the scenes weak model's training steps (its verdict measured in the note)
# A quick version of the toy chains for tests (applied to the live workflows, never saved): the mechanics in seconds.
QUICK_RUN = {"CoRe2ToyPromptList": {"count": 8},
             "CoRe2CollectBatch": {"seeds_per_prompt": 2, "steps": 10, "batch_size": 2},
             "CoRe2Reflect": {"steps": 300, "batch_size": 16, "val_fraction": 0.25}}


def _sdxl_base(wf: Workflow, x=460):
    ck = wf.add("CheckpointLoaderSimple", (x, 20), ckpt_name=SDXL_CKPT)
    pos = wf.add("CLIPTextEncode", (x + 360, 20), title="Positive", text=POS, clip=ck.out(1))
    neg = wf.add("CLIPTextEncode", (x + 360, 260), title="Negative", text=NEG, clip=ck.out(1))
    return ck, pos, neg


def wf_collect_sdxl() -> Workflow:
    wf = Workflow("01 Collect (SDXL)", (
        "CoRe² step 1 of 3: COLLECT (SDXL).\n\nCoRe² Collect Batch samples every prompt with seeds_per_prompt seeds "
        "at your CFG scale and stores the conditional and unconditional outputs of every step in "
        "output/core2_datasets/<dataset_name>. One prompt per line, or a .txt file in ComfyUI's input folder.\n\n"
        "Use a few hundred prompts × 2-8 seeds for a good weak model (every trajectory gets its own noise); a rerun "
        "skips what is already collected, so you can stop and resume. Use the sampler, steps and cfg you will sample "
        "with later. Keep store_x on: the weak model needs x_t to work on new seeds. Disk: ~19 MiB per 50-step 1024² "
        "image. batch_size > 1 is faster if your GPU has the memory.\n\nNext: 02 Reflect (train a weak model)."))
    ck = wf.add("CheckpointLoaderSimple", (460, 20), ckpt_name=SDXL_CKPT)
    prompts = "\n".join([
        "# one prompt per line; lines starting with # are ignored",
        "a photo of a red fox sitting in a snowy forest at sunrise",
        "a watercolor painting of a lighthouse on a cliff during a storm",
        "a close-up portrait of an old fisherman, dramatic lighting",
        "an isometric illustration of a cozy coffee shop",
        "a bowl of ramen on a wooden table, food photography",
        "a futuristic city skyline at night with neon lights"])
    cb = wf.add("CoRe2CollectBatch", (840, 20), size=(400, 640), model=ck.out(0), clip=ck.out(1), vae=ck.out(2),
                prompts=prompts, prompts_file="(none)", negative_prompt=NEG, seeds_per_prompt=2, seed=0, steps=30, cfg=6.0,
                sampler_name="euler", scheduler="normal", width=1024, height=1024, dataset_name="sdxl_dataset")
    wf.add("PreviewImage", (1280, 20), images=cb.out(0))
    return wf


def wf_reflect() -> Workflow:
    wf = Workflow("02 Reflect (train a weak model)", (
        "CoRe² step 2 of 3: REFLECT (train a weak model).\n\nPick the dataset written by CoRe² Collect. Training "
        "unloads your checkpoints, runs on the GPU if there is one and writes models/core2/<save_name>.safetensors "
        "(pick it in CoRe² Load Weak Model). While it trains, the node shows the step, the loss and the time left; "
        "then its verdict, from the relative error of the predicted guidance on held-out prompts (1.0 = no better "
        "than cfg 1, lower is better), e.g. \"useful: held-out error 0.62\" or \"no better than cfg 1: collect more "
        "seeds\", with the full summary. The preview shows the loss curve.\n\nCancel at any time: a checkpoint is "
        "saved; switch resume on to continue. Resume trains up to `steps` in all: after collecting more data, raise "
        "steps too.\n\nNext: 03 CoRe2 KSampler (SDXL)."))
    r = wf.add("CoRe2Reflect", (460, 20), size=(400, 420), dataset="sdxl_dataset", size_="medium", steps=2000,
               batch_size=16, learning_rate=3e-4, seed=0, val_fraction=0.1, resume=False, save_name="my_sdxl_weak")
    r.widgets["size"] = r.widgets.pop("size_")
    wf.add("PreviewImage", (900, 20), size=(520, 400), title="Loss curve", images=r.out("loss_curve"))
    return wf


def _core2(wf, pos, model, positive, negative, latent, weak, **kw):
    p = dict(seed=42, steps=30, cfg=6.0, sampler_name="euler", scheduler="normal", denoise=1.0, w2s_scale=1.5,
             slow_steps=10, method="core", zigzag_steps=-1, inv_cfg=0.5)
    p.update(kw)
    return wf.add("CoRe2KSampler", pos, size=(340, 600), model=model, positive=positive, negative=negative,
                  latent_image=latent, weak_model=weak, **p)


def wf_sdxl() -> Workflow:
    wf = Workflow("03 CoRe2 KSampler (SDXL)", (
        "CoRe² step 3 of 3: REFINE (sample with the CoRe² KSampler, SDXL).\n\nSame inputs as KSampler, plus the weak "
        "model. The first slow_steps steps run full CFG sharpened by the weak model "
        "(out = weak + w2s_scale·(cfg − weak)); the other steps run only the conditional pass and let the weak model "
        "stand in for CFG. Here 10 slow + 20 fast steps: 40 model passes instead of 60.\n\nw2s_scale 1.0 = plain CFG "
        "on slow steps. slow_steps = steps: best quality; 0: fastest.\n\nThe weak model comes from 02 Reflect (trained "
        "on this checkpoint)."))
    ck, pos, neg = _sdxl_base(wf)
    lat = wf.add("EmptyLatentImage", (820, 500), width=1024, height=1024, batch_size=1)
    weak = wf.add("CoRe2LoadWeakModel", (460, 260), weak_model_name="my_sdxl_weak.safetensors", model=ck.out(0),
                  lora_index_mode="official")
    ks = _core2(wf, (1200, 20), ck.out(0), pos.out(0), neg.out(0), lat.out(0), weak.out(0))
    dec = wf.add("VAEDecode", (1580, 20), samples=ks.out(0), vae=ck.out(2))
    wf.add("SaveImage", (1800, 20), size=(520, 560), images=dec.out(0), filename_prefix="core2_sdxl")
    return wf


def wf_sd35() -> Workflow:
    wf = Workflow("04 CoRe2 KSampler (SD3.5 Large)", (
        "CoRe² KSampler on SD3.5 (Large), with the OFFICIAL CoRe² weights, run as they were trained.\n\n"
        "ModelSamplingSD3 with shift 3, euler + simple, 28 steps, cfg 3.5 and an EMPTY negative prompt: the official "
        "sd35_noise_model.pth (Hugging Face repo sst12345/CoRe2, file weights/sd35_noise_model.pth, into "
        "models/core2/) was trained at cfg 3.5 against an empty negative, so keep both for it. With your own weak "
        "model (CoRe² Reflect on SD3.5) use the cfg and negative you collected with.\n\n"
        "The checkpoint must include its text encoders (e.g. sd3.5_large_fp8_scaled.safetensors); otherwise load them "
        "with TripleCLIPLoader."))
    ck = wf.add("CheckpointLoaderSimple", (460, 20), ckpt_name="sd3.5_large_fp8_scaled.safetensors")
    ms = wf.add("ModelSamplingSD3", (820, 500), model=ck.out(0), shift=3.0)
    pos = wf.add("CLIPTextEncode", (820, 20), title="Positive", text=POS, clip=ck.out(1))
    neg = wf.add("CLIPTextEncode", (820, 260), title="Negative (empty, as the official weights were trained)", text="",
                 clip=ck.out(1))
    lat = wf.add("EmptySD3LatentImage", (820, 620), width=1024, height=1024, batch_size=1)
    weak = wf.add("CoRe2LoadWeakModel", (460, 260), weak_model_name="sd35_noise_model.pth", model=ms.out(0),
                  lora_index_mode="official")
    ks = _core2(wf, (1200, 20), ms.out(0), pos.out(0), neg.out(0), lat.out(0), weak.out(0), steps=28, cfg=3.5,
                sampler_name="euler", scheduler="simple", slow_steps=8)
    dec = wf.add("VAEDecode", (1580, 20), samples=ks.out(0), vae=ck.out(2))
    wf.add("SaveImage", (1800, 20), size=(520, 560), images=dec.out(0), filename_prefix="core2_sd35")
    return wf


def wf_flux() -> Workflow:
    wf = Workflow("05 CoRe2 KSampler (FLUX.1 dev, true CFG)", (
        "CoRe² KSampler on FLUX.1-dev with TRUE CFG.\n\nFLUX dev is guidance-distilled: FluxGuidance sets the "
        "distilled guidance on the positive. CoRe² needs real CFG (a negative prompt and cfg > 1), which costs two "
        "passes per step; CoRe²'s fast steps bring most of that back to one pass.\n\nThe weak model must be trained on "
        "FLUX with CoRe² Collect + Reflect at this setting (there are no official FLUX weights). Files: "
        "models/diffusion_models/flux1-dev.safetensors, models/text_encoders/clip_l + t5xxl, models/vae/ae.safetensors."))
    unet = wf.add("UNETLoader", (460, 20), unet_name="flux1-dev.safetensors", weight_dtype="default")
    clip = wf.add("DualCLIPLoader", (460, 160), clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors",
                  type="flux", device="default")
    vae = wf.add("VAELoader", (460, 360), vae_name="ae.safetensors")
    pos = wf.add("CLIPTextEncode", (820, 20), title="Positive", text=POS, clip=clip.out(0))
    neg = wf.add("CLIPTextEncode", (820, 260), title="Negative", text=NEG, clip=clip.out(0))
    fg = wf.add("FluxGuidance", (820, 500), conditioning=pos.out(0), guidance=3.5)
    lat = wf.add("EmptySD3LatentImage", (820, 620), width=1024, height=1024, batch_size=1)
    weak = wf.add("CoRe2LoadWeakModel", (460, 480), weak_model_name="my_flux_weak.safetensors", model=unet.out(0),
                  lora_index_mode="official")
    ks = _core2(wf, (1200, 20), unet.out(0), fg.out(0), neg.out(0), lat.out(0), weak.out(0), steps=28, cfg=2.5,
                sampler_name="euler", scheduler="simple", slow_steps=8)
    dec = wf.add("VAEDecode", (1580, 20), samples=ks.out(0), vae=vae.out(0))
    wf.add("SaveImage", (1800, 20), size=(520, 560), images=dec.out(0), filename_prefix="core2_flux")
    return wf


def wf_official_sdxl() -> Workflow:
    wf = Workflow("06 Official CoRe2 weights (SDXL)", (
        "The OFFICIAL CoRe² weights on SDXL, run as the official code runs them.\n\nDownload "
        "weights/sdxl_noise_model.pth from the Hugging Face repo sst12345/CoRe2 into models/core2/. It was trained at "
        "50 steps, ddim + ddim_uniform, cfg 5.5: stay close (the sampler logs a warning otherwise). lora_index_mode "
        "picks each step's LoRA by the fraction of steps done (official) or by noise level (sigma; for other step "
        "counts).\n\nNegative: the official pipeline has no negative prompt; CFG runs against an ALL-ZERO negative "
        "(force_zeros_for_empty_prompt), and the weak model learned to imitate that. ConditioningZeroOut of the "
        "positive gives exactly that negative. To use a negative prompt instead, connect a CLIPTextEncode: the slow "
        "steps then use it, the weak model (fast steps) still imitates zero-negative CFG.\n\nThe official net costs "
        "~18% of a UNet call at 1024², so fast steps save less than with your own (Reflect) weak models."))
    ck = wf.add("CheckpointLoaderSimple", (460, 20), ckpt_name=SDXL_CKPT)
    pos = wf.add("CLIPTextEncode", (820, 20), title="Positive", text=POS, clip=ck.out(1))
    neg = wf.add("ConditioningZeroOut", (820, 260), title="Negative: zeros (official)", conditioning=pos.out(0))
    lat = wf.add("EmptyLatentImage", (820, 500), width=1024, height=1024, batch_size=1)
    weak = wf.add("CoRe2LoadWeakModel", (460, 260), weak_model_name="sdxl_noise_model.pth", model=ck.out(0),
                  lora_index_mode="official")
    ks = _core2(wf, (1200, 20), ck.out(0), pos.out(0), neg.out(0), lat.out(0), weak.out(0), steps=50, cfg=5.5,
                sampler_name="ddim", scheduler="ddim_uniform", slow_steps=10)
    dec = wf.add("VAEDecode", (1580, 20), samples=ks.out(0), vae=ck.out(2))
    wf.add("SaveImage", (1800, 20), size=(520, 560), images=dec.out(0), filename_prefix="core2_official_sdxl")
    return wf


def wf_grid_sdxl() -> Workflow:
    wf = Workflow("07 CFG vs CoRe2 (SDXL)", (
        "CFG vs CoRe² settings in one labelled grid (SDXL).\n\nCoRe² Compare samples the same seed with plain CFG and "
        "with CoRe² at slow_steps 10 and w2s_scale 1.5 and 2.5 (30 steps: 60 model passes for CFG, 40 for each CoRe² "
        "row); CoRe² Grid Image draws one row per setting with the model passes and seconds under each picture. Type "
        "more values into slow_steps or w2s_scale (e.g. \"0, 10, 30\") for more rows.\n\nThe weak model comes from "
        "02 Reflect (trained on this checkpoint)."))
    ck, pos, neg = _sdxl_base(wf)
    lat = wf.add("EmptyLatentImage", (820, 500), width=1024, height=1024, batch_size=1)
    weak = wf.add("CoRe2LoadWeakModel", (460, 260), weak_model_name="my_sdxl_weak.safetensors", model=ck.out(0),
                  lora_index_mode="official")
    cmp = wf.add("CoRe2Compare", (1200, 20), size=(340, 420), model=ck.out(0), seed=42, steps=30, cfg=6.0,
                 sampler_name="euler", scheduler="normal", positive=pos.out(0), negative=neg.out(0),
                 latent_image=lat.out(0), weak_model=weak.out(0), slow_steps="10", w2s_scale="1.5, 2.5",
                 include_cfg=True)
    dec = wf.add("VAEDecode", (1580, 20), samples=cmp.out("latent"), vae=ck.out(2))
    gi = wf.add("CoRe2GridImage", (1580, 200), images=dec.out(0), grid=cmp.out("grid"))
    wf.add("PreviewImage", (1860, 20), size=(620, 1200), title="CFG, then CoRe² settings", images=gi.out(0))
    return wf


def _demo_recipe():
    """The demo's measured collect-and-train recipe (demo/pipeline.py DemoConfig), which the toy chains use."""
    from demo.pipeline import DemoConfig

    return DemoConfig()


def wf_toy_chain() -> Workflow:
    d = _demo_recipe()
    wf = Workflow("08 Toy world (Collect, Reflect, Refine)", (
        "The whole CoRe² chain on the TOY WORLD, no downloads: about 4 minutes on a 2-core CPU (1 "
        "collecting, 3 training; measured), far less on a GPU.\n\n"
        "The toy model makes 32×32 pictures of one coloured shape at a place (\"a red triangle at the top\"). "
        f"CoRe² Toy Prompt List gives all {d.prompts} toy prompts; CoRe² Collect Batch samples each with "
        f"{d.seeds_per_prompt} noise seeds (cfg {d.cfg:g}, {d.steps} steps) into output/core2_datasets/toy_demo; CoRe² "
        f"Reflect trains a {d.size} weak model on it (models/core2/toy_weak, {d.train_steps} steps); the CoRe² "
        "KSampler then samples with 3 slow + 7 fast steps. This is the recipe the README measures "
        f"({d.prompts * d.seeds_per_prompt} trajectories): on seeds never collected its weak model beats CFG with "
        "half the steps at 4 and 6 model passes, and the training-free fill-ins where most steps are fast (Reflect's "
        "verdict in our run: useful, held-out error 0.741 with cfg 1 = 1.00). Each node says on itself what it did: "
        "Collect Batch its counts, Reflect its verdict (is the weak model better than cfg 1 on held-out "
        "prompts?), the sampler its model passes and measured seconds.\n\n"
        "Fewer prompts, seeds or steps show the mechanics faster, but the weak model then fails on new noise (it is "
        "soon no better than cfg 1). Resume is on: Reflect continues the trained file up to `steps` in all, and "
        "refuses (saying so) when new data would get no training steps; to train on more data, raise steps too. "
        "Reflect's dataset comes from the link (dataset_override). Keep the seeds as they are to resume a collection."))
    ld = wf.add("CoRe2ToyModelLoader", (460, 20), toy_model="toy_t2i.safetensors")
    pl = wf.add("CoRe2ToyPromptList", (460, 160), count=d.prompts, seed=0)
    cb = wf.add("CoRe2CollectBatch", (820, 20), size=(400, 640), model=ld.out(0), clip=ld.out(1), prompts=pl.out(0), prompts_file="(none)",
                negative_prompt="", seeds_per_prompt=d.seeds_per_prompt, seed=0, steps=d.steps, cfg=d.cfg,
                sampler_name=d.sampler_name, scheduler=d.scheduler, width=128, height=128, dataset_name="toy_demo", store_x=True,
                batch_size=8)
    wf.add("PreviewImage", (820, 700), size=(260, 300), title="Last collected", images=cb.out(0))
    rf = wf.add("CoRe2Reflect", (1260, 20), size=(400, 420), dataset_override=cb.out("dataset_name"),
                dataset="(use dataset_override)", steps=d.train_steps, batch_size=d.train_batch,
                learning_rate=d.train_lr, seed=0, val_fraction=d.val_fraction, resume=True, save_name="toy_weak")
    rf.widgets["size"] = d.size
    wf.add("PreviewImage", (1260, 480), size=(420, 340), title="Loss curve", images=rf.out("loss_curve"))
    pos = wf.add("CoRe2ToyTextEncode", (1700, 20), title="Positive", toy_text=ld.out(1), text="a red triangle at the top")
    neg = wf.add("CoRe2ToyTextEncode", (1700, 200), title="Negative (empty)", toy_text=ld.out(1), text="")
    lat = wf.add("CoRe2ToyEmptyLatent", (1700, 380), batch_size=4)
    ks = _core2(wf, (2060, 20), ld.out(0), pos.out(0), neg.out(0), lat.out(0), rf.out(0), seed=0, steps=10, cfg=5.0,
                sampler_name="euler", scheduler="normal", slow_steps=3)
    dec = wf.add("CoRe2ToyDecode", (2440, 20), samples=ks.out(0))
    wf.add("PreviewImage", (2660, 20), size=(300, 300), images=dec.out(0))
    return wf


def wf_toy_grid() -> Workflow:
    wf = Workflow("09 Toy world (CFG vs CoRe2)", (
        "CFG vs CoRe² on the TOY WORLD (no downloads).\n\nCoRe² Compare samples the same seed with plain CFG (10 "
        "steps: 20 model passes) and with CoRe² (3 slow + 7 fast steps: 13 passes); CoRe² Grid Image shows them in one "
        "labelled picture: top row CFG, bottom row CoRe², the model passes and seconds under each picture. Type several "
        "values into slow_steps or w2s_scale (e.g. \"0, 3, 10\") for one more row each.\n\n"
        "Needs models/core2/toy_weak.safetensors: run 08 Toy world (Collect, Reflect, Refine) once first."))
    ld = wf.add("CoRe2ToyModelLoader", (460, 20), toy_model="toy_t2i.safetensors")
    pos = wf.add("CoRe2ToyTextEncode", (820, 20), title="Positive", toy_text=ld.out(1), text="a blue circle at the left")
    neg = wf.add("CoRe2ToyTextEncode", (820, 200), title="Negative (empty)", toy_text=ld.out(1), text="")
    lat = wf.add("CoRe2ToyEmptyLatent", (820, 380), batch_size=4)
    weak = wf.add("CoRe2LoadWeakModel", (460, 160), weak_model_name="toy_weak.safetensors", model=ld.out(0),
                  lora_index_mode="official")
    cmp = wf.add("CoRe2Compare", (1200, 20), size=(340, 500), model=ld.out(0), seed=0, steps=10, cfg=5.0,
                 sampler_name="euler", scheduler="normal", positive=pos.out(0), negative=neg.out(0),
                 latent_image=lat.out(0), weak_model=weak.out(0), slow_steps="3", w2s_scale="1.5", include_cfg=True)
    dec = wf.add("CoRe2ToyDecode", (1580, 20), samples=cmp.out("latent"))
    gi = wf.add("CoRe2GridImage", (1580, 200), images=dec.out(0), grid=cmp.out("grid"))
    wf.add("PreviewImage", (1920, 20), size=(760, 420), title="Top row CFG, bottom row CoRe²", images=gi.out(0))
    return wf


def wf_scenes_chain() -> Workflow:
    d = _demo_recipe()  # collected as the demo collects; trained for SCENES_TRAIN_STEPS
    wf = Workflow("10 Toy scenes (Collect, Reflect, Refine)", (
        "The CoRe² chain on the SCENES toy world, no downloads: about 4.5 minutes on a 2-core CPU (2 collecting, "
        "2 training; measured), far less on a GPU.\n\n"
        "The scenes model (a flow-matching MMDiT, like SD3) makes 64×64 pictures of two objects in a relation "
        f"(\"a small red triangle left of a big blue circle\"). CoRe² Toy Prompt List gives {d.prompts} scene prompts; "
        f"CoRe² Collect Batch samples each with {d.seeds_per_prompt} noise seeds (cfg {d.cfg:g}, {d.steps} steps) into "
        f"output/core2_datasets/scenes_demo; CoRe² Reflect trains a {d.size} weak model (models/core2/scenes_weak, "
        f"{SCENES_TRAIN_STEPS} steps); then KSampler (CFG, 20 "
        "steps = 40 model passes), the CoRe² KSampler (4 slow + 16 fast steps = 24 passes) and KSampler at 12 steps "
        "(CFG at CoRe²'s 24 passes) draw the same prompt from the same seed. Reflect's verdict in our run: useful, "
        "held-out error 0.79 with cfg 1 = 1.00. On this world the step count matters (it samples with shift 0.2) and "
        "a lower scale, 3, is a little better than 5 at 20 steps; the README's benchmark compares both.\n\n"
        "Fewer prompts, seeds or steps show the mechanics faster, but the weak model then fails on new noise."))
    ld = wf.add("CoRe2ToyModelLoader", (460, 20), toy_model="scenes_t2i.safetensors")
    pl = wf.add("CoRe2ToyPromptList", (460, 160), count=d.prompts, seed=0, world="scenes")
    cb = wf.add("CoRe2CollectBatch", (820, 20), size=(400, 640), model=ld.out(0), clip=ld.out(1), prompts=pl.out(0),
                prompts_file="(none)", negative_prompt="", seeds_per_prompt=d.seeds_per_prompt, seed=0, steps=d.steps, cfg=d.cfg,
                sampler_name="euler", scheduler="simple", width=128, height=128, dataset_name="scenes_demo",
                store_x=True, batch_size=8)
    rf = wf.add("CoRe2Reflect", (1260, 20), size=(400, 420), dataset_override=cb.out("dataset_name"),
                dataset="(use dataset_override)", steps=SCENES_TRAIN_STEPS, batch_size=d.train_batch,
                learning_rate=d.train_lr, seed=0, val_fraction=d.val_fraction, resume=True, save_name="scenes_weak")
    rf.widgets["size"] = d.size
    wf.add("PreviewImage", (1260, 480), size=(420, 340), title="Loss curve", images=rf.out("loss_curve"))
    pos = wf.add("CoRe2ToyTextEncode", (1700, 20), title="Positive", toy_text=ld.out(1),
                 text="a small red triangle left of a big blue circle")
    neg = wf.add("CoRe2ToyTextEncode", (1700, 200), title="Negative (empty)", toy_text=ld.out(1), text="")
    lat = wf.add("CoRe2ToyEmptyLatent", (1700, 380), batch_size=4, world="scenes")
    k = wf.add("KSampler", (2060, 20), size=(320, 300), model=ld.out(0), seed=0, steps=20, cfg=5.0,
               sampler_name="euler", scheduler="simple", positive=pos.out(0), negative=neg.out(0),
               latent_image=lat.out(0), denoise=1.0)
    ks = _core2(wf, (2060, 360), ld.out(0), pos.out(0), neg.out(0), lat.out(0), rf.out(0), seed=0, steps=20,
                cfg=5.0, sampler_name="euler", scheduler="simple", slow_steps=4)
    k12 = wf.add("KSampler", (2060, 700), size=(320, 300), title="KSampler (CFG, 12 steps = 24 passes)",
                 model=ld.out(0), seed=0, steps=12, cfg=5.0, sampler_name="euler", scheduler="simple",
                 positive=pos.out(0), negative=neg.out(0), latent_image=lat.out(0), denoise=1.0)
    d1 = wf.add("CoRe2ToyDecode", (2440, 20), title="CFG (40 passes)", samples=k.out(0), upscale=4)
    d2 = wf.add("CoRe2ToyDecode", (2440, 360), title="CoRe² (24 passes)", samples=ks.out(0), upscale=4)
    d3 = wf.add("CoRe2ToyDecode", (2440, 700), title="CFG (24 passes)", samples=k12.out(0), upscale=4)
    wf.add("PreviewImage", (2660, 20), size=(420, 300), title="CFG, 20 steps", images=d1.out(0))
    wf.add("PreviewImage", (2660, 360), size=(420, 300), title="CoRe², 4 slow + 16 fast", images=d2.out(0))
    wf.add("PreviewImage", (2660, 700), size=(420, 300), title="CFG, 12 steps (CoRe²'s passes)", images=d3.out(0))
    return wf


# What the template browser's picture says about each workflow without a rendered thumbnail (a title card drawn by
# tools/render_thumbnails.py): title, the CoRe² stages it runs, what it needs.
CARDS = {
    "01 Collect (SDXL)": ("Collect (SDXL)", ("Collect",), "step 1 of 3: record CFG trajectories"),
    "02 Reflect (train a weak model)": ("Reflect: train a weak model", ("Reflect",), "step 2 of 3: any collected dataset"),
    "03 CoRe2 KSampler (SDXL)": ("CoRe² KSampler (SDXL)", ("Refine",), "step 3 of 3: your weak model"),
    "04 CoRe2 KSampler (SD3.5 Large)": ("CoRe² KSampler (SD3.5 Large)", ("Refine",), "official CoRe² weights, cfg 3.5"),
    "05 CoRe2 KSampler (FLUX.1 dev, true CFG)": ("CoRe² KSampler (FLUX.1-dev)", ("Refine",), "true CFG, your weak model"),
    "06 Official CoRe2 weights (SDXL)": ("Official CoRe² weights (SDXL)", ("Refine",), "50 steps, ddim, cfg 5.5"),
    "07 CFG vs CoRe2 (SDXL)": ("CFG vs CoRe² (SDXL)", ("Refine",), "same seed, side by side"),
}

WORKFLOW_BUILDERS = [wf_collect_sdxl, wf_reflect, wf_sdxl, wf_sd35, wf_flux, wf_official_sdxl, wf_grid_sdxl,
                     wf_toy_chain, wf_toy_grid, wf_scenes_chain]
TOY_WORKFLOWS = ("08 Toy world (Collect, Reflect, Refine)", "09 Toy world (CFG vs CoRe2)", "10 Toy scenes (Collect, Reflect, Refine)")


def build_all() -> dict:
    sch = schemas()
    return {wf.name: wf.build(sch) for wf in (b() for b in WORKFLOW_BUILDERS)}


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    a = ap.parse_args(argv)
    built = build_all()
    problems = builtin_problems()
    if problems:
        print("this ComfyUI's built-in nodes differ from builtins() in a way that breaks the workflows:\n  "
              + "\n  ".join(problems))
        return 1
    WORKFLOWS.mkdir(exist_ok=True)
    bad = []
    for name, wf in built.items():
        p = WORKFLOWS / f"{name}.json"
        text = dumps(wf)
        if a.check:
            if not p.is_file() or p.read_text(encoding="utf-8") != text:
                bad.append(p.name)
        else:
            p.write_text(text, encoding="utf-8")
    if bad:
        print("out of date (run python -m tools.make_workflows):", ", ".join(bad))
        return 1
    print(f"{len(built)} workflows {'up to date' if a.check else 'written'} in {WORKFLOWS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
