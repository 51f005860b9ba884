"""Reflect nodes: train a weak model on a collected dataset, and load weak-model files."""
from __future__ import annotations

import logging
import time

import torch

import comfy.model_management as mm
import comfy.utils

from ..core2 import advice, fillins, loss_plot
from ..core2.arch import SIZES
from ..core2.dataset import MANIFEST
from ..core2.files import safe_child, valid_name
from ..core2.train import TrainSettings, optimizer_path, partial_path, train
from ..core2.weights_io import load_weak_model
from . import model_info, paths
from .feedback import NodeText, duration, with_text
from .inputs import ADVANCED, FIXED_SEED, HIDDEN

log = logging.getLogger(__name__)

CATEGORY = "CoRe²/reflect"
WEAK = "CORE2_WEAK_MODEL"
# Always offered first, so a saved workflow stays valid whether or not datasets exist yet (it then reads
# dataset_override, e.g. linked from CoRe² Collect Batch's dataset_name output).
USE_OVERRIDE = "(use dataset_override)"
AUTO_SIZE = "auto"  # the size entry that picks by the training device (size_for_device)


def size_for_device(size: str, device) -> str:
    """The weak-model size to train: `size` itself, or for "auto" tiny on a CPU (medium trains about 20× slower there,
    and tiny scored as small on the toy world) and medium on a GPU."""
    if size != AUTO_SIZE:
        return size
    return "tiny" if torch.device(device).type == "cpu" else "medium"


def list_datasets() -> list[str]:
    root = paths.datasets_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if valid_name(p.name) and (p / MANIFEST).is_file())


def _model_file_name(name: str) -> str:
    name = (name or "").strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    return name + ".safetensors"


def _image(img) -> torch.Tensor:
    return torch.from_numpy(loss_plot.to_array(img))[None]


class CoRe2Reflect:
    DESCRIPTION = ("Reflect: trains a small weak model that predicts the CFG output from the conditional output, on a "
                   "dataset written by CoRe² Collect. Unloads big models first, trains on the GPU if there is one, "
                   "saves checkpoints you can resume, and writes models/core2/<save_name>.safetensors.")

    @classmethod
    def INPUT_TYPES(cls):
        datasets = [USE_OVERRIDE] + list_datasets()
        return {
            "required": {
                "dataset": (datasets, {"tooltip": "A dataset folder under output/core2_datasets (written by CoRe² Collect)."}),
                "size": ([AUTO_SIZE, *SIZES], {"default": AUTO_SIZE, "tooltip": "Weak-model size: tiny is fastest, large "
                                       "fits best; all cost well under 3% of an SDXL UNet call. auto: tiny when training "
                                       "runs on the CPU (medium trains about 20× slower there; on the toy world tiny "
                                       "scored as small at under a third of the parameters), medium on a GPU. The "
                                       "summary names the size trained."}),
                "steps": ("INT", {"default": 2000, "min": 1, "max": 1_000_000, "tooltip": "Total optimizer steps. With resume, training continues up to this count."}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 1024, "tooltip": "Samples per step. Lower it if you run out of memory."}),
                "learning_rate": ("FLOAT", {"default": 3e-4, "min": 1e-7, "max": 1.0, "step": 1e-5, "round": False,
                                            "tooltip": "AdamW learning rate (warm-up, then cosine decay to 10%)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, **FIXED_SEED, "tooltip":
                                 "Seed for initialisation, shuffling and the validation split."}),
                "val_fraction": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.9, "step": 0.05,
                                           "tooltip": "Share of PROMPTS held out to measure how well the model generalises."}),
                "resume": ("BOOLEAN", {"default": False, "tooltip": "Continue the checkpoint with this save name (its step count and optimizer state) "
                                      "up to `steps` in all: to train on newly collected data, raise steps too. "
                                      "Off: an existing file with this name is not overwritten (an error asks for another name)."}),
                "save_name": ("STRING", {"default": "core2_weak", "tooltip": "File name in models/core2 (.safetensors is added)."}),
            },
            "optional": {
                "dataset_override": ("STRING", {"default": "", "tooltip": "Type a dataset folder name here to use it instead of the list."}),
                "guidance_memory": ("BOOLEAN", {"default": True, "tooltip":
                                    "The weak model also sees the guidance measured on the latest slow step of the run "
                                    "(it starts as the 'reuse last guidance' fill-in and learns what that gets wrong). "
                                    "Needs a dataset collected with store_x; ignored when resuming an older model."}),
            },
            **HIDDEN,
        }

    RETURN_TYPES = (WEAK, "IMAGE", "STRING")
    RETURN_NAMES = ("weak_model", "loss_curve", "summary")
    OUTPUT_TOOLTIPS = ("The trained weak model, for the CoRe² samplers.", "Training loss and validation error per step.",
                       "A verdict (from the relative error of the predicted guidance on held-out prompts; 1.0 = cfg 1), "
                       "then what was trained, on what, and how well.")
    FUNCTION = "reflect"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def reflect(self, dataset, size, steps, batch_size, learning_rate, seed, val_fraction, resume, save_name,
                dataset_override="", guidance_memory=True, unique_id=None):
        name = (dataset_override or "").strip() or dataset
        if name == USE_OVERRIDE:
            raise ValueError("CoRe² Reflect: no dataset chosen. Pick one from the list (run CoRe² Collect first if it is "
                             "empty), or type or link a dataset name into dataset_override.")
        folder = safe_child(paths.datasets_dir(), name, "dataset name")
        if not folder.is_dir():
            raise ValueError(f"CoRe² Reflect: no dataset named {name!r} in {paths.datasets_dir()}.")
        out = safe_child(paths.weak_model_save_dir(), _model_file_name(save_name), "save name")
        if resume:
            stale = advice.resume_would_skip_new_data([out, partial_path(out)], folder, int(steps))
            if stale:
                raise ValueError(f"CoRe² Reflect: {out.stem}: {stale}")
        device = mm.get_torch_device()
        settings = TrainSettings(steps=int(steps), batch_size=int(batch_size), lr=float(learning_rate),
                                 size=size_for_device(size, device),
                                 seed=int(seed), val_fraction=float(val_fraction), device=str(device), resume=bool(resume),
                                 memory=bool(guidance_memory))
        mm.unload_all_models()
        mm.soft_empty_cache()
        text = NodeText(unique_id)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                res = train(folder, out, settings, on_step=_progress(int(steps), text),
                            check_cancel=mm.throw_exception_if_processing_interrupted)
        finally:
            mm.soft_empty_cache()
        verdict = advice.verdict(res.metrics)
        log.info("%s\nverdict: %s", res.summary, verdict)
        res.model.to(mm.unet_offload_device())  # the CoRe² samplers move it to the sampling device
        img = loss_plot.draw(res.history["train"], res.history["val"], title=f"CoRe² Reflect: {out.name}",
                             val_label=f"validation score ({res.metrics.get('loss', 'mixed')} loss)", verdict=verdict)
        summary = f"{verdict}\n\n{res.summary}"
        return with_text(summary, (res.model, _image(img), summary), unique_id)


def _progress(steps: int, text: NodeText, clock=time.monotonic):
    """on_step for train(): ComfyUI's progress bar (which also raises on cancel where ComfyUI's hook is installed) and
    'step 120/300 · loss 0.4123 · 12 s left' on the node."""
    pbar = comfy.utils.ProgressBar(steps)
    start: list = []

    def on_step(step, total, loss):
        pbar.update_absolute(step, total)
        now = clock()
        if not start:
            start.extend((now, step))
        t0, s0 = start
        left = (now - t0) / (step - s0) * (total - step) if step > s0 else None
        eta = f" · {duration(left)} left" if left is not None else ""
        text.show(f"training: step {step}/{total} · loss {loss:.4f}{eta}", final=step >= total)

    return on_step


class CoRe2LoadWeakModel:
    DESCRIPTION = ("Loads a weak model from models/core2: one trained with CoRe² Reflect, or official CoRe² weights. "
                   "The two '(training-free)' entries need no file: 'cond only' lets fast steps use the conditional "
                   "prediction as it is; 'reuse last guidance' adds the guidance difference of the most recent slow "
                   "step. They work out of the box and are the floor a trained weak model should beat. "
                   "Connect a MODEL to check right away that the weak model fits it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"weak_model_name": (paths.list_weak_models() + list(fillins.FILLINS), {"tooltip":
                                             "A file in models/core2, or a training-free fill-in (no file)."})},
            "optional": {"model": ("MODEL", {"tooltip": "Optional: the base model, to check family, latent channels, "
                                             "prediction type and (as a warning) the base model's architecture (its keys and shapes: a fine-tune or merge of the same model looks the same)."}),
                         "lora_index_mode": (["official", "sigma"], {"default": "official", **ADVANCED, "tooltip":
                                             "Official CoRe² weights only (ignored for other weak models): pick each "
                                             "step's LoRA by the fraction of steps done (official) or by the nearest "
                                             "training noise level (sigma)."})},
        }

    RETURN_TYPES = (WEAK, "STRING")
    RETURN_NAMES = ("weak_model", "info")
    OUTPUT_TOOLTIPS = ("The weak model, for the CoRe² samplers.", "What the file holds and how it matches the MODEL.")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, weak_model_name, **_):
        """Reload when the file changes (a retrained or resumed model saved under the same name)."""
        if weak_model_name in fillins.FILLINS:
            return weak_model_name
        try:
            st = paths.weak_model_path(weak_model_name).stat()
            return f"{st.st_mtime_ns}-{st.st_size}"
        except OSError:
            return float("nan")

    def load(self, weak_model_name, model=None, lora_index_mode="official"):
        if weak_model_name in fillins.FILLINS:
            weak = fillins.make(weak_model_name)
            return (weak, f"{weak.name}: no file, no training; fits every MODEL")
        path = paths.weak_model_path(weak_model_name)
        with torch.inference_mode(False):
            weak = load_weak_model(path)
        if hasattr(weak, "lora_index_mode"):
            weak.lora_index_mode = lora_index_mode
        info = describe(weak)
        if model is not None:
            weak.check_compatible(model_info.family(model), model_info.latent_channels(model), model_info.prediction(model))
            warn = base_model_warning(weak, model)
            if warn:
                log.warning("%s", warn)
                info += "\nwarning: " + warn
            else:
                info += "\nmatches the connected MODEL"
        return (weak, info)


def base_model_warning(weak, model) -> str | None:
    """A warning when the weak model was trained on a base model of another architecture (identity()'s key_hash:
    keys and shapes). A fine-tune or merge of the same model has the same keys and shapes and is not noticed."""
    meta = getattr(weak, "metadata", {}) or {}
    trained = (meta.get("base_model") or {}).get("key_hash")
    if not trained:
        return None
    now = model_info.identity(model)["key_hash"]
    if now != trained:
        return (f"CoRe²: the weak model '{weak.name}' was trained on a base model of another architecture "
                f"({(meta.get('base_model') or {}).get('name')} [{trained}], this MODEL is [{now}]). It will run, but "
                "it may guide badly; collect and train on this model for the best match.")
    return None


def describe(weak) -> str:
    meta = getattr(weak, "metadata", {}) or {}
    lines = [f"{weak.name}: {type(weak).__name__}, family {weak.family}, {weak.latent_channels or 'any'}-channel latents, "
             f"prediction {weak.prediction or 'any'}"]
    if meta.get("config"):
        memory = ", remembers the latest slow step's guidance" if meta["config"].get("memory") else ""
        lines.append(f"architecture {meta['config'].get('arch')} ({meta['config'].get('size')}{memory})")
    if meta.get("cfg"):
        lines.append(f"trained on CFG {meta['cfg']}")
    tr = meta.get("training") or {}
    if tr:
        state = "complete" if tr.get("complete") else "checkpoint (training not finished)"
        lines.append(f"steps {tr.get('step')}/{tr.get('steps')} ({state})")
    vm = meta.get("val_metrics") or {}
    if vm.get("rel_err") is not None:
        x0 = f", in x0 space {vm['rel_err_x0']:.4f}" if vm.get("rel_err_x0") is not None else ""
        lines.append(f"validation relative error {vm['rel_err']:.4f}{x0} (identity map = 1.0)")
    gain = getattr(weak, "guidance_gain", None)
    if gain is not None:
        lines.append(f"guidance calibrated {gain.describe()} on steps with no slow step to go on")
    return "\n".join(lines)


NODE_CLASS_MAPPINGS = {"CoRe2Reflect": CoRe2Reflect, "CoRe2LoadWeakModel": CoRe2LoadWeakModel}
NODE_DISPLAY_NAME_MAPPINGS = {"CoRe2Reflect": "CoRe² Reflect (Train Weak Model)", "CoRe2LoadWeakModel": "CoRe² Load Weak Model"}

__all__ = ["CoRe2Reflect", "CoRe2LoadWeakModel", "list_datasets", "optimizer_path"]
