"""The example workflows in workflows/: well-formed UI-format JSON whose nodes, widget values and links fit our
nodes' INPUT_TYPES (and ComfyUI's built-ins); with a full ComfyUI (COMFYUI_DIR) also checked against a live server's
/object_info, the toy chain run through the HTTP API, and the README's install steps (git clone into custom_nodes)."""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
import urllib.parse

import pytest

from conftest import COMFY, ROOT
from testkit import comfy_server
from tools import make_workflows as mw

WF_DIR = ROOT / "workflows"
FILES = sorted(WF_DIR.glob("*.json"))
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


@pytest.fixture(scope="module")
def schemas():
    return mw.schemas()


def _load(p):
    return json.loads(p.read_text(encoding="utf-8"))


def test_every_example_is_there_and_up_to_date():
    built = mw.build_all()
    assert sorted(f"{n}.json" for n in built) == [p.name for p in FILES]
    for name, wf in built.items():
        assert (WF_DIR / f"{name}.json").read_text(encoding="utf-8") == mw.dumps(wf), \
            f"{name}.json is stale: run python -m tools.make_workflows"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_is_ui_format_v04(path, schemas):
    wf = _load(path)
    assert wf["version"] == 0.4
    for k in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert k in wf, k
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] == max(ids)
    assert wf["last_link_id"] == max([l[0] for l in wf["links"]] or [0])
    notes = [n for n in wf["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 100, "each workflow explains itself in a Note"
    for n in wf["nodes"]:
        for k in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"):
            assert k in n, (path.name, n.get("id"), k)
        assert n["type"] in schemas, f"{path.name}: unknown node type {n['type']}"
        if n["type"] != "Note":
            assert n["properties"]["Node name for S&R"] == n["type"]
    orders = sorted(n["order"] for n in wf["nodes"])
    assert orders == list(range(len(orders)))


def _check_value(where, inp: mw.Input, v):
    t = inp.type
    if t == mw.FILES:
        assert isinstance(v, str) and v, f"{where}: file name expected, got {v!r}"
        return
    if isinstance(t, list):
        assert v in t, f"{where}: {v!r} is not one of {t[:12]}"
        return
    o = inp.opts
    if t == "INT":
        assert isinstance(v, int) and not isinstance(v, bool), f"{where}: int expected, got {v!r}"
    elif t == "FLOAT":
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), f"{where}: {v!r}"
    elif t == "STRING":
        assert isinstance(v, str), f"{where}: string expected, got {v!r}"
    elif t == "BOOLEAN":
        assert isinstance(v, bool), f"{where}: boolean expected, got {v!r}"
    if t in ("INT", "FLOAT"):
        assert o.get("min", -math.inf) <= v <= o.get("max", math.inf), f"{where}: {v} outside [{o.get('min')}, {o.get('max')}]"
        if t == "INT" and o.get("step", 1) > 1:
            assert (v - o.get("min", 0)) % o["step"] == 0, f"{where}: {v} is not a multiple of step {o['step']}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_widget_values_fit_input_types(path, schemas):
    wf = _load(path)
    for n in wf["nodes"]:
        s = schemas[n["type"]]
        vals = list(n["widgets_values"])
        k = 0
        for inp in s.widgets:
            where = f"{path.name} node {n['id']} {n['type']}.{inp.name}"
            assert k < len(vals), f"{where}: missing widget value"
            _check_value(where, inp, vals[k])
            k += 1
            if inp.has_control:
                assert vals[k] in CONTROL_VALUES, f"{where}: control_after_generate {vals[k]!r}"
                k += 1
        assert k == len(vals), f"{path.name} node {n['id']} {n['type']}: {len(vals)} widget values, expected {k}"


def _types_match(out_type: str, in_type: str) -> bool:
    """ComfyUI's rule (comfy_execution/validation.py): equal, or overlapping comma-separated unions, or '*'."""
    a = {t.strip() for t in out_type.split(",")}
    b = {t.strip() for t in in_type.split(",")}
    return "*" in a or "*" in b or bool(a & b)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_links_connect_matching_types(path, schemas):
    wf = _load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for lid, src, sslot, dst, dslot, ltype in wf["links"]:
        s_node, d_node = nodes[src], nodes[dst]
        out_name, out_type = schemas[s_node["type"]].outputs[sslot]
        assert ltype == out_type == s_node["outputs"][sslot]["type"]
        assert lid in s_node["outputs"][sslot]["links"]
        d_in = d_node["inputs"][dslot]
        assert d_in["link"] == lid, f"{path.name}: link {lid} does not land on input slot {dslot} of node {dst}"
        inp = schemas[d_node["type"]].input(d_in["name"])
        assert _types_match(out_type, inp.link_type), f"{path.name}: link {lid} {out_type} -> {d_in['name']} ({inp.link_type})"
        if inp.is_widget:
            assert d_in.get("widget") == {"name": inp.name}
    # every required link input of every node is connected
    for n in wf["nodes"]:
        linked = {i["name"] for i in n["inputs"] if i.get("link") is not None}
        for inp in schemas[n["type"]].inputs:
            if not inp.is_widget and not inp.optional:
                assert inp.name in linked, f"{path.name}: node {n['id']} {n['type']} has no {inp.name} link"


def test_thumbnails_for_toy_workflows_are_small_jpgs():
    for name in mw.TOY_WORKFLOWS:
        p = WF_DIR / f"{name}.jpg"
        assert p.is_file(), f"{p.name} missing: run python -m tools.render_thumbnails"
        data = p.read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and len(data) < 100_000


def test_collect_batch_encodes_with_the_toy_text_encoder():
    """The toy chain's Collect Batch gets the toy text encoder in its clip input: same conditioning as Toy Text Encode."""
    import torch
    from comfyui_core2.nodes import collect, collect_batch, toy

    _, toy_text = toy.CoRe2ToyModelLoader().load(toy.SHIPPED)
    got = collect_batch.encode_text(toy_text, "a red triangle at the top")
    want = toy.CoRe2ToyTextEncode().encode(toy_text, "a red triangle at the top")[0]
    assert torch.equal(got[0][0], want[0][0]) and torch.equal(got[0][1]["pooled_output"], want[0][1]["pooled_output"])
    assert not torch.equal(got[0][0], collect_batch.encode_text(toy_text, "a blue circle at the left")[0][0])
    with pytest.raises(TypeError, match="connect a CLIP"):
        collect_batch.encode_text(object(), "x")


def test_ui_to_api_conversion_maps_widgets_by_input_order(schemas):
    """The converter used against the live server, on our schemas rendered as /object_info (no server needed)."""
    info = {t: _object_info_like(s) for t, s in schemas.items()}
    wf = _load(WF_DIR / "08 Toy world (Collect, Reflect, Refine).json")
    api = comfy_server.ui_to_api(wf, info)
    assert "1" not in api  # the Note
    ks = next(v for v in api.values() if v["class_type"] == "CoRe2KSampler")
    assert ks["inputs"]["seed"] == 0 and ks["inputs"]["steps"] == 10 and ks["inputs"]["slow_steps"] == 3
    assert ks["inputs"]["method"] == "core" and isinstance(ks["inputs"]["weak_model"], list)
    cb = next(v for v in api.values() if v["class_type"] == "CoRe2CollectBatch")
    assert isinstance(cb["inputs"]["prompts"], list) and cb["inputs"]["dataset_name"] == "toy_demo"


def test_toy_chain_trains_with_the_measured_demo_recipe(schemas):
    """08 collects and trains what the README measures (demo/pipeline.py DemoConfig: 480 trajectories, 5000 steps),
    so the weak model a user gets from it is the one the benchmark scores, not a toy that is no better than cfg 1;
    the live tests cut it with QUICK_RUN, whose names must be real inputs."""
    from demo.pipeline import DemoConfig

    d = DemoConfig()
    info = {t: _object_info_like(s) for t, s in schemas.items()}
    api = comfy_server.ui_to_api(_load(WF_DIR / "08 Toy world (Collect, Reflect, Refine).json"), info)
    by = {v["class_type"]: v["inputs"] for v in api.values()}
    assert by["CoRe2ToyPromptList"]["count"] == d.prompts
    cb, rf = by["CoRe2CollectBatch"], by["CoRe2Reflect"]
    assert (cb["seeds_per_prompt"], cb["steps"], cb["cfg"], cb["store_x"]) == (d.seeds_per_prompt, d.steps, d.cfg, True)
    assert (cb["sampler_name"], cb["scheduler"]) == (d.sampler_name, d.scheduler)
    assert (rf["size"], rf["steps"], rf["batch_size"], rf["learning_rate"], rf["val_fraction"], rf["guidance_memory"]) \
        == (d.size, d.train_steps, d.train_batch, d.train_lr, d.val_fraction, d.memory)
    quick = {v["class_type"]: v["inputs"] for v in comfy_server.with_widgets(api, mw.QUICK_RUN).values()}
    assert quick["CoRe2Reflect"]["steps"] < rf["steps"] and quick["CoRe2ToyPromptList"]["count"] < d.prompts
    with pytest.raises(KeyError, match="no input"):
        comfy_server.with_widgets(api, {"CoRe2Reflect": {"stepz": 1}})


def _object_info_like(s: mw.Schema) -> dict:
    sec = {"required": {}, "optional": {}}
    for i in s.inputs:
        t = i.type if isinstance(i.type, list) else ("COMBO" if i.type == mw.FILES else i.type)
        sec["optional" if i.optional else "required"][i.name] = [t, i.opts]
    return {"input": sec, "input_order": {k: list(v) for k, v in sec.items()}}


# ---------------------------------------------------------------------------------------------------------------
# full ComfyUI: a live server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with comfy_server.Server.running(COMFY.path, ROOT, tmp_path_factory.mktemp("comfy_base")) as srv:
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info", timeout=120)


@pytest.mark.full_comfy
def test_builtin_schemas_match_live_server(object_info):
    """Declared built-ins fit the live server: same leading inputs and outputs (newer cores may append)."""
    problems = []
    for name, declared in mw.builtins().items():
        if name in mw.FRONTEND_ONLY:
            continue
        assert name in object_info, f"ComfyUI has no {name}"
        problems += mw.compat_problems(name, declared, comfy_server.input_specs(object_info[name]),
                                       object_info[name]["output"])
    assert not problems, problems


@pytest.mark.full_comfy
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_workflow_widgets_valid_for_live_object_info(path, object_info):
    wf = _load(path)
    for n in wf["nodes"]:
        if n["type"] in comfy_server.FRONTEND_ONLY:
            continue
        assert n["type"] in object_info, f"{path.name}: the server has no node {n['type']}"
        info = object_info[n["type"]]
        values = comfy_server.widget_map(n, info)
        specs = {name: spec for name, spec, _ in comfy_server.input_specs(info)}
        for name, v in values.items():
            t, o = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            choices = t if isinstance(t, list) else (o.get("options") if t == "COMBO" else None)
            if choices is not None:
                if (n["type"], name) in mw.OUR_FILE_COMBOS or n["type"] in ("CheckpointLoaderSimple", "UNETLoader",
                                                                                "VAELoader") or name.startswith("clip_name"):
                    continue  # the user's files
                assert v in choices, f"{path.name} {n['type']}.{name}: {v!r} not in {choices[:10]}"
            elif t in ("INT", "FLOAT"):
                assert o.get("min", -math.inf) <= v <= o.get("max", math.inf), (path.name, n["type"], name, v)
        for i in n["inputs"]:
            assert i["name"] in specs, (path.name, n["type"], i["name"])


@pytest.mark.full_comfy
def test_server_offers_our_workflows_as_templates(server):
    """ComfyUI serves <pack>/workflows/*.json (and same-named .jpg thumbnails) in its template browser."""
    listed = server.get("/workflow_templates").get("comfyui-core2")
    assert sorted(listed or []) == [p.stem for p in FILES]
    name = mw.TOY_WORKFLOWS[0]
    url = "/api/workflow_templates/comfyui-core2/" + urllib.parse.quote(name)  # the names are titles: spaces, commas
    assert json.loads(server.get_bytes(url + ".json")) == _load(WF_DIR / f"{name}.json")
    assert server.get_bytes(url + ".jpg")[:3] == b"\xff\xd8\xff"


@pytest.mark.full_comfy
def test_toy_workflows_run_through_the_api(server, object_info):
    """08 (collect → reflect → CoRe² KSampler) then 09 (CFG vs CoRe², using the weak model 08 trained: one labelled
    grid picture, top row CFG, bottom row CoRe²), the collect and train budgets cut to make_workflows.QUICK_RUN."""
    # 08: four CoRe² pictures, the last collected batch (batch_size 2), the loss curve
    # 10: the scenes world's chain (collect → reflect → CFG, CoRe² and CFG-at-CoRe²'s-passes pictures, the loss curve)
    for name, expect_images in (("08 Toy world (Collect, Reflect, Refine)", 4 + 2 + 1), ("09 Toy world (CFG vs CoRe2)", 1),
                                ("10 Toy scenes (Collect, Reflect, Refine)", 4 + 4 + 4 + 1)):
        api = comfy_server.ui_to_api(_load(WF_DIR / f"{name}.json"), server.get("/object_info", timeout=120))
        hist = server.run_prompt(comfy_server.with_widgets(api, mw.QUICK_RUN), timeout=240)
        images = [im for out in hist["outputs"].values() for im in out.get("images", [])]
        assert len(images) == expect_images, (name, hist["outputs"])
        texts = {n: out["text"][0] for n, out in hist["outputs"].items() if out.get("text")}
        types = {k: v["class_type"] for k, v in api.items()}
        for n, text in texts.items():  # what the nodes show on themselves
            if types[n] == "CoRe2CollectBatch":
                assert re.match(r"16 new, 0 already present", text), text  # QUICK_RUN: 8 prompts × 2 seeds
            elif types[n] == "CoRe2Reflect":
                assert text.startswith(("useful", "barely better", "no better than cfg 1", "not checked")), text
        if "collect" in name:
            assert {"CoRe2CollectBatch", "CoRe2Reflect"} <= {types[n] for n in texts}, texts
        for im in images[:2]:
            data = server.get_bytes(f"/view?filename={im['filename']}&subfolder={im['subfolder']}&type={im['type']}")
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        if name == "09 Toy world (CFG vs CoRe2)":  # 2 rows (CFG, CoRe²) × 4 pictures of 128 px, with labels and captions
            from PIL import Image

            w, h = Image.open(io.BytesIO(data)).size
            assert w > 4 * 128 + 100 and 2 * 128 < h < 3 * 128 + 60, (w, h)
    assert (server.base / "models" / "core2" / "toy_weak.safetensors").is_file()
    assert (server.base / "models" / "core2" / "scenes_weak.safetensors").is_file()
    assert (server.base / "output" / "core2_datasets" / "toy_demo" / "manifest.json").is_file()


@pytest.mark.full_comfy
def test_readme_install_git_clone_then_comfyui_lists_our_nodes(tmp_path):
    """README: `cd ComfyUI/custom_nodes && git clone <repo>`; ComfyUI then imports the pack without errors."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    custom = tmp_path / "custom_nodes"
    custom.mkdir()
    r = subprocess.run(["git", "clone", "-q", str(ROOT), "comfyui-core2"], cwd=custom, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", str(tmp_path),
                        "--disable-auto-launch", "--verbose", "DEBUG"], cwd=COMFY.path, capture_output=True, text=True,
                       timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    mine = [l for l in log.splitlines() if "comfyui-core2" in l]
    assert any(str(custom / "comfyui-core2") in l for l in mine), log[-3000:]
    assert not any("IMPORT FAILED" in l for l in mine), "\n".join(mine)
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.full_comfy
def test_pyproject_is_a_valid_registry_config():
    from comfy_config import config_parser

    cfg = config_parser.extract_node_configuration(str(ROOT))
    assert cfg is not None
    p = cfg.project
    assert p.name == "comfyui-core2" and p.version and p.description
    assert p.license.file == "LICENSE" and (ROOT / "LICENSE").is_file()
    for url in (p.urls.repository, p.urls.issues, p.urls.documentation):
        assert url.startswith("https://github.com/comfyui-core2/comfyui-core2"), url
    t = cfg.tool_comfy
    assert t.publisher_id and t.display_name and t.icon.startswith("https://")
    icon = t.icon.split("/main/", 1)[-1]  # the icon is served from this repository's main branch
    assert (ROOT / icon).is_file() and (ROOT / icon).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", icon
    for m in t.models:
        assert m.location.startswith("/models/core2/") and m.model_url.startswith("https://huggingface.co/sst12345/CoRe2/")
    # the registry packs git-tracked files plus [tool.comfy] includes: the toy weights, workflows and the frontend
    # extension must get in (-z: the workflow names have spaces)
    tracked = subprocess.run(["git", "ls-files", "-z", "toy/weights", "workflows", "web"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split("\0")
    for need in ("toy/weights/toy_t2i.safetensors", "workflows/08 Toy world (Collect, Reflect, Refine).json",
                 "web/template_order.js"):
        assert need in tracked or any(need.startswith(i.rstrip("/") + "/") for i in t.includes), need


def test_official_sdxl_workflow_runs_cfg_against_a_zero_negative():
    """Workflow 06 runs the official weights as the official code does: the negative is ConditioningZeroOut of the
    positive (an all-zero negative, tokens and pooled), not a text encoding."""
    wf = _load(WF_DIR / "06 Official CoRe2 weights (SDXL).json")
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {lk[0]: lk for lk in wf["links"]}

    def source(node, name):
        (inp,) = [i for i in node["inputs"] if i["name"] == name]
        return nodes[links[inp["link"]][1]]

    (ks,) = [n for n in nodes.values() if n["type"] == "CoRe2KSampler"]
    neg, pos = source(ks, "negative"), source(ks, "positive")
    assert neg["type"] == "ConditioningZeroOut" and source(neg, "conditioning") is pos
    assert pos["type"] == "CLIPTextEncode"


@pytest.mark.full_comfy
def test_core2_apply_makes_comfyuis_own_ksampler_run_core2_in_the_server(server):
    """A queued prompt: toy model → CoRe² Apply (training-free fill-in) → ComfyUI's KSampler; the server's log shows
    the CoRe² run (3 slow + 5 fast steps: 11 passes, spread by the auto placement)."""
    api = {
        "1": {"class_type": "CoRe2ToyModelLoader", "inputs": {"toy_model": "toy_t2i.safetensors"}},
        "2": {"class_type": "CoRe2ToyTextEncode", "inputs": {"toy_text": ["1", 1], "text": "a red circle at the top"}},
        "3": {"class_type": "CoRe2ToyTextEncode", "inputs": {"toy_text": ["1", 1], "text": ""}},
        "4": {"class_type": "CoRe2ToyEmptyLatent", "inputs": {"batch_size": 1, "world": "shapes"}},
        "5": {"class_type": "CoRe2LoadWeakModel", "inputs": {"weak_model_name": "(training-free) reuse last guidance"}},
        "6": {"class_type": "CoRe2Apply", "inputs": {"model": ["1", 0], "weak_model": ["5", 0], "w2s_scale": 1.5,
                                                     "slow_steps": 3}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": 3, "steps": 8, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                                   "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "8": {"class_type": "CoRe2ToyDecode", "inputs": {"samples": ["7", 0], "upscale": 1}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    hist = server.run_prompt(api)
    assert [im for out in hist["outputs"].values() for im in out.get("images", [])]
    # slow_placement left at auto: the reuse fill-in builds on the last slow step, so half the slow steps come first
    # and the rest are spread
    line = "CoRe² (core): 8 steps (3 slow (front: steps 0, 1, 2), 5 fast), 11 model passes vs 16 for CFG"
    assert line in server.log(), server.log()[-3000:]
