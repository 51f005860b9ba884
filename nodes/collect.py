"""CoRe² Collect: record CFG trajectories while sampling (a MODEL wrapper) or for a whole prompt list (a batch node).

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

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

from ..core2 import dataset as ds
from ..core2.files import check_free_space, safe_child
from ..core2.guidance import raw_from_denoised
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
CLIP_TYPES = "CLIP,CORE2_TOY_TEXT"  # a union type: ComfyUI links either a CLIP or the toy text encoder here
# samplers that evaluate the model twice per step (for disk estimates)
_TWO_EVAL = {"heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
             "dpmpp_sde_gpu", "seeds_2", "exp_heun_2_x0", "exp_heun_2_x0_sde"}

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
    if not (folder / ds.MANIFEST).is_file():
        return
    old = ds._read_manifest_file(folder)["header"]
    diffs = [f"{k}: dataset has {old.get(k)!r}, this run has {header[k]!r}" for k in ds.MUST_MATCH
             if k in header and old.get(k) != header[k]]
    if diffs:
        raise ds.DatasetError("CoRe²: refusing to mix different models or latent shapes in one dataset ("
                              + "; ".join(diffs) + "). Use a new dataset name for this model or size.")


def _feature_bytes(f) -> bytes:
    if f is None:
        return b"none"
    parts = [f.tokens]
    if f.pooled is not None:
        parts.append(f.pooled)
    h = hashlib.sha256()
    for t in parts:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.digest()


def conditioning_pid(pos, neg) -> str:
    """A prompt id from the conditioning tensors (used where the prompt text is unknown)."""
    return hashlib.sha256(b"cond" + _feature_bytes(pos) + _feature_bytes(neg)).hexdigest()[:16]


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
            pid = conditioning_pid(pos, neg)
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


def _derived_cfg(x0: torch.Tensor, cond_x0: torch.Tensor, uncond_x0: torch.Tensor) -> torch.Tensor:
    """Per-row g from x0 = u + g·(c − u) (least squares), for ComfyUI versions whose post-CFG args lack cond_scale."""
    d = (cond_x0 - uncond_x0).flatten(1).float()
    num = ((x0 - uncond_x0).flatten(1).float() * d).sum(1)
    return num / d.pow(2).sum(1).clamp_min(1e-30)


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
        if (self.folder / ds.MANIFEST).is_file():
            hw = ds._read_manifest(self.folder)["header"].get("latent_hw")
            self.latent_hw = tuple(hw) if hw else None

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
            g = _derived_cfg(args["denoised"], c_x0, u_x0)
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


# ---------------------------------------------------------------------------------------------------------------
# batch collection


@dataclass
class BatchResult:
    folder: Path
    written: list
    skipped: list  # (prompt, seed) pairs already present before this run
    latent: torch.Tensor | None  # the last sampled latent
    evaluations: int


def parse_prompt_lines(text: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are ignored; duplicates dropped."""
    out, seen = [], set()
    for line in (text or "").splitlines():
        s = line.strip()
        if s and not s.startswith("#") and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def prompt_files() -> list[str]:
    d = paths.input_dir()
    return sorted(p.name for p in d.glob("*.txt") if p.is_file()) if d.is_dir() else []


def read_prompt_file(name: str) -> list[str]:
    """Prompts from a .txt file directly in ComfyUI's input folder (no sub-folders, no escapes)."""
    if not name.lower().endswith(".txt"):
        raise ValueError(f"CoRe²: prompts file {name!r} must be a .txt file in ComfyUI's input folder.")
    p = safe_child(paths.input_dir(), name, "prompts file")
    if not p.is_file():
        raise FileNotFoundError(f"CoRe²: no prompts file {name!r} in {paths.input_dir()}.")
    return parse_prompt_lines(p.read_text(encoding="utf-8", errors="replace"))


def _latent_downscale(model) -> int:
    lf = model_info.base_model(model).latent_format
    return int(getattr(lf, "spacial_downscale_ratio", 8) or 8)


def trajectory_seed(seed: int, pid: str, j: int) -> int:
    """The noise seed of the j-th trajectory of a prompt: seed + a per-prompt offset (from the prompt id) + j.

    Every (prompt, j) pair gets its own noise. A weak model learns the guidance from many different noises; with
    the same few seeds for every prompt it learns those noises instead, and fails on new seeds. The offset comes
    from the prompt text, so adding or reordering prompts keeps the seeds (and resume) of the others."""
    return (int(seed) + int(pid[:12], 16) + int(j)) % 2**64


def collect_batch(model, prompts: list[str], negative_prompt: str, encode: Callable[[str], list], *, seeds_per_prompt: int,
                  seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, width: int, height: int,
                  dataset_name: str, store_x: bool, on_item_done: Callable | None = None, batch_size: int = 1) -> BatchResult:
    """Sample every (prompt, seed) pair not yet in the dataset with recording on. encode(text) -> CONDITIONING.

    batch_size trajectories of one prompt run together as the rows of one latent batch (faster, more memory):
    the j-th trajectory of a prompt is row j % batch_size of the call seeded with trajectory_seed(seed, pid, j0),
    j0 = j − j % batch_size."""
    if not prompts:
        raise ValueError("CoRe² Collect Batch: no prompts. Write one prompt per line or pick a .txt file.")
    if not (cfg > 1.0 and not math.isclose(cfg, 1.0, abs_tol=1e-6)):
        raise ValueError(f"CoRe² Collect Batch: cfg is {cfg}; collecting needs cfg > 1 (e.g. 5-8), because CoRe² learns "
                         "the gap between the conditional and unconditional outputs.")
    if steps < 1 or seeds_per_prompt < 1 or batch_size < 1:
        raise ValueError("CoRe² Collect Batch: steps, seeds_per_prompt and batch_size must be at least 1.")
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS or scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"CoRe² Collect Batch: unknown sampler {sampler_name!r} or scheduler {scheduler!r}.")
    folder = dataset_folder(dataset_name)
    down = _latent_downscale(model)
    if width % down or height % down or width < 2 * down or height < 2 * down:
        raise ValueError(f"CoRe² Collect Batch: width and height must be multiples of {down} (got {width}x{height}).")
    h, w = height // down, width // down
    mhdr = model_header(model)
    hdr = {**mhdr, "latent_hw": [h, w]}
    check_dataset_compatible(folder, hdr)
    neg_text = negative_prompt or ""
    todo, skipped = [], []
    with folder_lock(folder):
        writer_keys = ds.intact_keys(folder)  # listed items whose files are intact: damaged ones are collected again
    for text in prompts:  # todo: (text, call seed, rows) per sampling call; skipped: "text|seed|row"
        pid = ds.prompt_id(text, neg_text)
        for j0 in range(0, seeds_per_prompt, batch_size):
            s = trajectory_seed(seed, pid, j0)
            rows = min(batch_size, seeds_per_prompt - j0)
            done = [b for b in range(rows) if ds.item_key(pid, s, b) in writer_keys]
            if len(done) == rows:
                skipped.extend(f"{text}|{s}|{b}" for b in done)
            else:  # a call records all its rows; rows already there are kept (first recording wins)
                todo.append((text, s, rows))
    evals_per_step = 2 if sampler_name in _TWO_EVAL else 1
    c = mhdr["latent_channels"]
    n_todo = sum(r for _, _, r in todo)
    need = ds.estimate_dataset_bytes(n_todo, steps * evals_per_step, c, h, w, store_x) + len(prompts) * 2 * 2**20
    check_free_space(folder.parent, need, f"collecting {n_todo} trajectories into dataset '{folder.name}'")
    if skipped:
        log.info("CoRe² Collect Batch: %d of %d trajectories are already in '%s'; collecting the other %d.",
                 len(skipped), len(skipped) + n_todo, folder.name, n_todo)
    result = BatchResult(folder, [], list(skipped), None, 0)
    if not todo:
        return result
    folder.mkdir(parents=True, exist_ok=True)

    session = CollectSession(folder, mhdr, store_x=store_x, known_cfg=float(cfg))
    wrapped = session.wrap(model, run_markers=False)
    ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler,
                                 denoise=1.0, model_options=model.model_options)
    schedule = ks.sigmas.detach().cpu()
    settings = {"source": "CoRe2CollectBatch", "sampler": sampler_name, "scheduler": scheduler, "steps": int(steps),
                "cfg": float(cfg), "width": int(width), "height": int(height)}
    pbar = comfy.utils.ProgressBar(len(todo) * steps)
    neg_cond = encode(neg_text)
    cache: tuple = (None, None)
    failed = True
    try:
        for i, (text, s, rows) in enumerate(todo):
            comfy.model_management.throw_exception_if_processing_interrupted()
            if cache[0] != text:
                cache = (text, encode(text))
            pos_cond = cache[1]
            latent = torch.zeros(rows, c, h, w)
            noise = comfy.sample.prepare_noise(latent, s)

            def callback(step, x0, x, total, _base=i * steps):
                pbar.update_absolute(_base + min(step + 1, steps))
                comfy.model_management.throw_exception_if_processing_interrupted()

            session.recorder.begin_run({"seed": s, "prompt": (text, neg_text), "schedule": schedule, "settings": settings,
                                        "features": (conditioning.features(pos_cond), conditioning.features(neg_cond))})
            try:
                samples = comfy.sample.sample(wrapped, noise, steps, cfg, sampler_name, scheduler, pos_cond, neg_cond,
                                              latent, disable_pbar=True, seed=s, callback=callback)
            except BaseException:
                session.recorder.abort_run()
                raise
            session.recorder.end_run(wait=False)
            result.latent = samples
            pbar.update_absolute((i + 1) * steps)
            if on_item_done is not None:
                on_item_done(i, text, s)
        failed = False
    finally:
        # commits every finished item, also when cancelled; writer errors are raised unless another error is
        # already on its way
        session.recorder.close(raise_errors=not failed)
    result.written = list(session.sink.written)
    result.evaluations = session.recorder.stats["evaluations"]
    return result


# ---------------------------------------------------------------------------------------------------------------
# CLIP encoding and previews


def encode_text(clip, text: str) -> list:
    """CONDITIONING for a text, like ComfyUI's CLIPTextEncode; also takes the toy world's text encoder
    (CORE2_TOY_TEXT from CoRe² Toy Model Loader: an object whose .text_encoder.encode(text) gives tokens, pooled)."""
    toy = getattr(clip, "text_encoder", None)
    if not hasattr(clip, "tokenize") and callable(getattr(toy, "encode", None)):
        tokens, pooled = toy.encode(text)
        return [[tokens.detach().clone(), {"pooled_output": pooled.detach().clone()}]]
    if not hasattr(clip, "tokenize"):
        raise TypeError(f"CoRe² Collect Batch: cannot encode prompts with a {type(clip).__name__}; connect a CLIP "
                        "(from a checkpoint or CLIP loader) or the toy_text output of CoRe² Toy Model Loader.")
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def latent_preview_image(model, latent: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """A rough RGB image [B,H,W,3] from a latent (the latent format's RGB factors), upscaled to image size."""
    lf = model_info.base_model(model).latent_format
    lat = latent.float().cpu()
    factors = getattr(lf, "latent_rgb_factors", None)
    if factors is not None and len(factors) == lat.shape[1]:
        rgb = torch.einsum("bchw,cr->brhw", lat, torch.tensor(factors, dtype=torch.float32))
        bias = getattr(lf, "latent_rgb_factors_bias", None)
        if bias is not None:
            rgb = rgb + torch.tensor(bias, dtype=torch.float32).view(1, 3, 1, 1)
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    else:
        rgb = lat[:, :3] if lat.shape[1] >= 3 else lat[:, :1].expand(-1, 3, -1, -1)
        lo, hi = rgb.amin(), rgb.amax()
        rgb = (rgb - lo) / (hi - lo + 1e-8)
    rgb = torch.nn.functional.interpolate(rgb, scale_factor=scale, mode="nearest")
    return rgb.permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# nodes


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


class CoRe2CollectBatch:
    DESCRIPTION = ("Collects CFG trajectories for a whole prompt list in one queued run: every prompt with "
                   "seeds_per_prompt noise seeds of its own (derived from seed and the prompt text: many different "
                   "noises make a weak model that works on new seeds). Reruns skip (prompt, seed) pairs already in the dataset, so "
                   "a cancelled or crashed collection resumes where it stopped. Returns the last image and the dataset name.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("last_image", "dataset_name")
    OUTPUT_TOOLTIPS = ("The last sampled image (decoded with the VAE if given, else a rough latent preview).",
                       "The dataset name, for CoRe² Reflect.")
    FUNCTION = "collect"
    OUTPUT_NODE = True
    NONE_FILE = "(none)"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": (CLIP_TYPES, {"tooltip": "Encodes every prompt and the negative prompt: a CLIP, or the toy_text "
                                   "output of CoRe² Toy Model Loader."}),
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                            "One prompt per line (blank lines and lines starting with # are ignored)."}),
                "prompts_file": ([cls.NONE_FILE] + prompt_files(), {"tooltip":
                                 "Or a .txt file in ComfyUI's input folder, one prompt per line (added to the prompts above)."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "Used for every prompt."}),
                "seeds_per_prompt": ("INT", {"default": 2, "min": 1, "max": 1000}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Base seed. Each prompt gets its own seeds, derived from this one and the prompt text (stable when you add or reorder prompts)."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Must be > 1. The weak model learns CFG at this scale."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
                "width": ("INT", {"default": 1024, "min": 16, "max": 8192, "step": 8}),
                "height": ("INT", {"default": 1024, "min": 16, "max": 8192, "step": 8}),
                "dataset_name": ("STRING", {"default": "core2_dataset"}),
                "store_x": ("BOOLEAN", {"default": True, "tooltip": "Store the noisy latent x_t of each step (1.5x the disk space). Keep it on: the weak model trained on it transfers to new seeds far better; off only to save disk."}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Only to decode the preview image."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip":
                               "Trajectories of one prompt sampled together as one latent batch: faster (about 2x at 4 "
                               "on small models), needs batch_size times the memory. Changing it later samples new "
                               "noises rather than resuming the old ones."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, prompts_file=NONE_FILE, dataset_name="", **kwargs):
        """Rerun when the prompts file or the dataset changed (ComfyUI would otherwise reuse the cached result)."""
        h = hashlib.sha256()
        try:
            if prompts_file and prompts_file != cls.NONE_FILE:
                h.update(safe_child(paths.input_dir(), prompts_file, "prompts file").read_bytes())
            folder = dataset_folder(dataset_name)
            if (folder / ds.MANIFEST).is_file():
                h.update(ds.manifest_hash(folder).encode())
        except (OSError, ValueError):
            return float("nan")
        return h.hexdigest()

    def collect(self, model, clip, prompts, prompts_file, negative_prompt, seeds_per_prompt, seed, steps, cfg, sampler_name,
                scheduler, width, height, dataset_name, store_x, vae=None, batch_size=1):
        items = parse_prompt_lines(prompts)
        if prompts_file and prompts_file != self.NONE_FILE:
            items += [p for p in read_prompt_file(prompts_file) if p not in items]
        res = collect_batch(model, items, negative_prompt, lambda t: encode_text(clip, t), seeds_per_prompt=seeds_per_prompt,
                            seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, width=width,
                            height=height, dataset_name=dataset_name, store_x=store_x, batch_size=int(batch_size))
        if res.latent is None:
            image = torch.zeros(1, height, width, 3)
        elif vae is not None:
            image = vae.decode(res.latent)
            if image.ndim == 5:
                image = image.reshape(-1, *image.shape[-3:])
        else:
            image = latent_preview_image(model, res.latent, _latent_downscale(model))
        log.info("CoRe² Collect Batch: %d new trajectories, %d already present, dataset %s", len(res.written),
                 len(res.skipped), res.folder)
        return {"ui": {"text": [f"{len(res.written)} new, {len(res.skipped)} already present in {res.folder.name}"]},
                "result": (image, res.folder.name)}


NODE_CLASS_MAPPINGS = {"CoRe2Collect": CoRe2Collect, "CoRe2CollectBatch": CoRe2CollectBatch}
NODE_DISPLAY_NAME_MAPPINGS = {"CoRe2Collect": "CoRe² Collect", "CoRe2CollectBatch": "CoRe² Collect Batch"}
