"""CoRe² Collect: record CFG trajectories while sampling (a MODEL wrapper). The batch node that samples a whole
prompt list with this recording is in collect_batch.py.

Recording point: a post-CFG function (it sees x_t, σ, the cond and uncond x0 predictions, the CFG scale and both
conditionings) that returns the sampler's result untouched, so images are bit-identical to the unwrapped model.
Where ComfyUI has sampler wrappers (comfy.patcher_extension, 2025+), an OUTER_SAMPLE wrapper marks the start and end
of each sampling call (seed, σ schedule, sampler); without it runs are split where σ goes up and are committed when the
next run starts or the model is released. Copies to the CPU and disk writes run on a writer thread (core2/recorder.py).
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..core2 import dataset as ds
from ..core2.files import safe_child
from ..core2.guidance import derived_cfg, raw_from_denoised
from ..core2.recorder import CompletedRun, Evaluation, TrajectoryRecorder
from . import conditioning, model_info, paths

try:  # ComfyUI 2025+: sampler wrappers
    import comfy.patcher_extension as _pe
except ImportError:  # notcomfy / late-2024 ComfyUI
    _pe = None

log = logging.getLogger(__name__)

CATEGORY = "CoRe²/collect"
WRAPPER_KEY = "core2_collect"
CFG1_MESSAGE = ("CoRe² Collect: this sampler runs at cfg = 1 (or without a negative prompt), so there is no unconditional "
                "output to record. Set cfg > 1 (e.g. 5-8) on the sampler and give it a negative conditioning, or remove "
                "the CoRe² Collect node.")

_FOLDER_LOCKS: dict[str, threading.Lock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


def folder_lock(folder: Path) -> threading.Lock:
    """One lock per dataset folder in this process: writers re-open the manifest under it, so two sessions writing
    the same dataset never overwrite each other's entries."""
    key = str(Path(folder).resolve())
    with _FOLDER_LOCKS_GUARD:
        return _FOLDER_LOCKS.setdefault(key, threading.Lock())


def dataset_folder(name: str) -> Path:
    """The dataset folder for a user-given name, confined to <output>/core2_datasets."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("CoRe²: give the dataset a name (letters, digits, '.', '_', '-', spaces).")
    return safe_child(paths.datasets_dir(), name.strip(), "dataset name")


def model_header(model) -> dict:
    """The model part of a dataset header (the keys DatasetWriter checks, latent_hw excepted)."""
    ident = model_info.identity(model)
    return {"family": model_info.family(model), "prediction": model_info.prediction(model),
            "latent_channels": model_info.latent_channels(model), "base_model_hash": ident["key_hash"],
            "base_model": ident}


def check_dataset_compatible(folder: Path, header: dict) -> None:
    """Refuse early (before sampling) when the dataset holds another model or latent shape."""
    ds.DatasetWriter.check_compatible(folder, header)


def _noise_seed(run: CompletedRun) -> int:
    """Stand-in seed where the sampler does not tell it: a hash of the run's first conditional output."""
    t = run.trajectories[0].tensors["cond"][0].to(torch.float16).contiguous()
    return int(hashlib.sha256(t.numpy().tobytes()).hexdigest()[:12], 16)


class DatasetSink:
    """Writes completed runs (on the recorder's thread): prompt features once, one shard per trajectory."""

    def __init__(self, folder: Path, model_hdr: dict, prompt_label: str = ""):
        self.folder = Path(folder)
        self.model_hdr = dict(model_hdr)
        self.prompt_label = prompt_label or ""
        self.written: list[str] = []
        self.skipped: list[str] = []

    def __call__(self, run: CompletedRun) -> None:
        meta = run.meta
        cond0 = run.trajectories[0].tensors["cond"]
        header = {**self.model_hdr, "latent_hw": [int(cond0.shape[-2]), int(cond0.shape[-1])]}
        settings = dict(meta.get("settings") or {})
        if run.schedule is not None:
            settings["sigmas"] = [round(s, 6) for s in run.schedule]
            settings.setdefault("steps", len(run.schedule) - 1)
        header.update({k: settings.get(k) for k in ("sampler", "scheduler", "steps", "sigmas", "cfg")})
        if "prompt" in meta:
            pos_text, neg_text = meta["prompt"]
            pos, neg = meta["features"]
            pid = None
        else:
            ctx = run.context
            pos, neg = conditioning.features(ctx.get("cond")), conditioning.features(ctx.get("uncond"))
            if pos is None:
                raise ValueError("CoRe² Collect: the positive conditioning has no text embedding to record.")
            pid = ds.conditioning_pid(pos, neg)
            pos_text, neg_text = self.prompt_label, None
        seed = meta.get("seed")
        extra = {"evaluations": run.evaluations}
        if seed is None:
            seed = _noise_seed(run)
            extra["seed_source"] = "noise-hash"
        with folder_lock(self.folder):
            w = ds.DatasetWriter(self.folder, header)
            w.note_run(settings)
            extra["run"] = w.manifest["runs"].index(settings)
            pid = w.add_prompt(pos_text, neg_text, pos, neg, pid=pid)
            for t in run.trajectories:
                key = ds.item_key(pid, seed, t.batch_index)
                if w.has(pid, seed, t.batch_index):
                    log.info("CoRe² Collect: %s is already in dataset %s; kept the first recording.", key, self.folder.name)
                    self.skipped.append(key)
                    continue
                w.add_trajectory(pid, int(seed), t.batch_index, t.tensors, extra=dict(extra))
                self.written.append(key)


def _sampler_name(sampler) -> str | None:
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", None)
    if name:
        return name[len("sample_"):] if name.startswith("sample_") else name
    return type(sampler).__name__ if sampler is not None else None


@dataclass
class CollectSession:
    """State of one Collect node execution: the dataset, the recorder thread and the hooks placed on a MODEL."""

    folder: Path
    model_hdr: dict
    store_x: bool = False
    prompt_label: str = ""
    max_pending: int = 64
    known_cfg: float | None = None  # the CFG scale when the caller knows it (ComfyUI versions without cond_scale)
    latent_hw: tuple | None = None
    sink: DatasetSink = field(init=False)
    recorder: TrajectoryRecorder = field(init=False)

    def __post_init__(self):
        self.sink = DatasetSink(self.folder, self.model_hdr, self.prompt_label)
        self.recorder = TrajectoryRecorder(self.sink, max_pending=self.max_pending)
        weakref.finalize(self, _close_quietly, self.recorder)
        stored = ds.DatasetWriter.stored_header(self.folder)
        if stored is not None:
            self.latent_hw = tuple(stored["latent_hw"])

    # --- hooks ---------------------------------------------------------------------------------------------
    def on_evaluation(self, args: dict) -> None:
        if args.get("uncond") is None:
            raise ValueError(CFG1_MESSAGE)
        g = args.get("cond_scale", self.known_cfg)
        if g is not None and not torch.is_tensor(g) and math.isclose(float(g), 1.0, abs_tol=1e-6):
            raise ValueError(CFG1_MESSAGE)
        x = args["input"]
        hw = tuple(x.shape[-2:])
        if self.latent_hw is None:
            self.latent_hw = hw
        elif hw != self.latent_hw:
            raise ds.DatasetError(f"CoRe² Collect: this latent is {hw[0]}x{hw[1]} but dataset '{self.folder.name}' holds "
                                  f"{self.latent_hw[0]}x{self.latent_hw[1]} latents; use a new dataset name for another size.")
        sigma = args["sigma"]
        c_x0, u_x0 = args["cond_denoised"], args["uncond_denoised"]
        if g is None:
            g = derived_cfg(args["denoised"], c_x0, u_x0)
        rc = raw_from_denoised(x, c_x0, sigma).to(torch.float16)
        ru = raw_from_denoised(x, u_x0, sigma).to(torch.float16)
        xs = x.detach().to(torch.float16, copy=True) if self.store_x else None
        mo = args.get("model_options") or {}
        sched = (mo.get("transformer_options") or {}).get("sample_sigmas")
        self.recorder.record(Evaluation(sigma=sigma.detach(), cond=rc, uncond=ru, cfg=g, x=xs, schedule=sched,
                                        context={"cond": args.get("cond"), "uncond": args.get("uncond")}))

    def post_cfg(self) -> Callable:
        session = self

        def core2_collect_post_cfg(args):
            session.on_evaluation(args)
            return args["denoised"]

        core2_collect_post_cfg.core2_session = session  # functions survive model_options deep copies by reference
        return core2_collect_post_cfg

    def outer_sample_wrapper(self) -> Callable:
        session = self

        def core2_collect_outer_sample(executor, *args, **kwargs):
            guider = getattr(executor, "class_obj", None)
            cfg = getattr(guider, "cfg", None)
            if cfg is not None and math.isclose(float(cfg), 1.0, abs_tol=1e-6):
                raise ValueError(CFG1_MESSAGE)
            sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
            sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
            seed = args[7] if len(args) > 7 else kwargs.get("seed")
            settings = {"source": "CoRe2Collect", "sampler": _sampler_name(sampler), "cfg": None if cfg is None else float(cfg)}
            weak = getattr(guider, "weak", None)  # a CoRe² sampler: its fast steps steer the pictures
            if weak is not None:
                settings["steered_by"] = str(getattr(weak, "name", "weak model"))
            session.recorder.begin_run({"seed": None if seed is None else int(seed), "schedule": sigmas, "settings": settings})
            try:
                out = executor(*args, **kwargs)
            except BaseException:
                session.recorder.abort_run()
                raise
            session.recorder.end_run(wait=True)
            return out

        return core2_collect_outer_sample

    def wrap(self, model, run_markers: bool = True):
        """A clone of the MODEL that records; run_markers adds the OUTER_SAMPLE wrapper where ComfyUI has one."""
        m = model.clone()
        m.set_model_sampler_post_cfg_function(self.post_cfg())
        if run_markers and _pe is not None and hasattr(m, "add_wrapper_with_key"):
            m.add_wrapper_with_key(_pe.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, self.outer_sample_wrapper())
        return m

    def close(self) -> None:
        self.recorder.close()


def session_of(model) -> CollectSession | None:
    """The CollectSession recording through a MODEL (None if it is not wrapped by CoRe² Collect)."""
    for fn in model.model_options.get("sampler_post_cfg_function", []):
        s = getattr(fn, "core2_session", None)
        if s is not None:
            return s
    return None


def _close_quietly(recorder: TrajectoryRecorder) -> None:
    try:
        recorder.close(raise_errors=False)
    except Exception:  # noqa: BLE001 - at exit / garbage collection there is nobody to tell
        log.exception("CoRe² Collect: could not flush the last run")


class CoRe2Collect:
    DESCRIPTION = ("Records CFG trajectories while you sample. Put it between your model and any sampler (KSampler, "
                   "KSamplerAdvanced, SamplerCustomAdvanced with CFGGuider): every step at cfg > 1 stores σ, the "
                   "conditional and unconditional outputs (and optionally x_t) in a CoRe² dataset, used by CoRe² Reflect "
                   "to train a weak model. Images are exactly the same as without this node.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The same model, recording every sampling run into the dataset.",)
    FUNCTION = "wrap"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to sample with (SD1.5, SDXL, SD3/3.5, Flux with a negative)."}),
                "dataset_name": ("STRING", {"default": "core2_dataset", "tooltip":
                                 "Folder under output/core2_datasets. Reusing a name adds to that dataset (same model and size only)."}),
                "store_x": ("BOOLEAN", {"default": True, "tooltip": "Store the noisy latent x_t of each step (1.5x the disk space). Keep it on: the weak model trained on it transfers to new seeds far better; off only to save disk."}),
            },
            "optional": {
                "prompt_label": ("STRING", {"default": "", "tooltip": "Prompt text to note in the dataset manifest "
                                            "(the sampler does not pass it on). Prompts are told apart by their conditioning."}),
            },
        }

    def wrap(self, model, dataset_name, store_x, prompt_label=""):
        folder = dataset_folder(dataset_name)
        mhdr = model_header(model)
        check_dataset_compatible(folder, mhdr)
        session = CollectSession(folder, mhdr, store_x=bool(store_x), prompt_label=prompt_label or "")
        return (session.wrap(model),)


NODE_CLASS_MAPPINGS = {"CoRe2Collect": CoRe2Collect}
NODE_DISPLAY_NAME_MAPPINGS = {"CoRe2Collect": "CoRe² Collect"}
