"""CoRe² Collect Batch: sample a whole prompt list with recording on (collect.py's CollectSession), in one queued run.

The batch driver: prompt lists and files, the plan (which (prompt, seed) pairs are still missing: reruns resume),
text encoding, the sampling loop, and the preview image. Text on the node says what is going on ("prompt 12/120")
and what the run did ("16 new, 0 already present").
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

from ..core2 import dataset as ds
from ..core2.files import check_free_space, safe_child
from . import conditioning, model_info, paths
from .collect import CATEGORY, CollectSession, check_dataset_compatible, dataset_folder, folder_lock, model_header
from .feedback import NodeText, with_text
from .inputs import FIXED_SEED, HIDDEN

log = logging.getLogger(__name__)

CLIP_TYPES = "CLIP,CORE2_TOY_TEXT"  # a union type: ComfyUI links either a CLIP or the toy text encoder here
# samplers that evaluate the model twice per step (for disk estimates)
_TWO_EVAL = {"heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
             "dpmpp_sde_gpu", "seeds_2", "exp_heun_2_x0", "exp_heun_2_x0_sde"}


@dataclass
class BatchResult:
    folder: Path
    written: list  # item keys written by this run
    skipped: list  # "text|seed|row" of the trajectories already in the dataset
    latent: torch.Tensor | None  # the last sampled latent
    evaluations: int
    other_shards: int = 0  # trajectories left to the other shards


@dataclass
class Plan:
    """What a run will sample: todo = (text, call seed, rows) per sampling call; skipped as in BatchResult."""
    folder: Path
    header: dict  # the dataset header of this run (latent_hw included)
    todo: list
    skipped: list
    other_shards: int = 0  # trajectories that belong to other shards (not sampled here)

    @property
    def n_todo(self) -> int:
        return sum(r for _, _, r in self.todo)


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


def _check_settings(model, prompts, cfg, steps, seeds_per_prompt, batch_size, sampler_name, scheduler, width, height):
    """Refuse bad settings with a message that says what to change, before anything is sampled."""
    if not prompts:
        raise ValueError("CoRe² Collect Batch: no prompts. Write one prompt per line or pick a .txt file.")
    if not (cfg > 1.0 and not math.isclose(cfg, 1.0, abs_tol=1e-6)):
        raise ValueError(f"CoRe² Collect Batch: cfg is {cfg}; collecting needs cfg > 1 (e.g. 5-8), because CoRe² learns "
                         "the gap between the conditional and unconditional outputs.")
    if steps < 1 or seeds_per_prompt < 1 or batch_size < 1:
        raise ValueError("CoRe² Collect Batch: steps, seeds_per_prompt and batch_size must be at least 1.")
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS or scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"CoRe² Collect Batch: unknown sampler {sampler_name!r} or scheduler {scheduler!r}.")
    problem = model_info.size_problem(model, width, height)
    if problem:
        raise ValueError(f"CoRe² Collect Batch: {problem}.")


def plan_batch(model, prompts, negative_prompt, *, seeds_per_prompt, seed, width, height, dataset_name,
               batch_size, shard: tuple[int, int] = (0, 1)) -> Plan:
    """Which sampling calls are still to run: (prompt, seed) pairs whose items are listed and intact are skipped;
    shard = (index, count): only the calls ds.shard_of gives to this shard."""
    folder = dataset_folder(dataset_name)
    down = model_info.latent_downscale(model)
    header = {**model_header(model), "latent_hw": [height // down, width // down]}
    check_dataset_compatible(folder, header)
    neg_text = negative_prompt or ""
    todo, skipped, others = [], [], 0
    with folder_lock(folder):
        done_keys = ds.intact_keys(folder)  # listed items whose files are intact: damaged ones are collected again
    for text in prompts:
        pid = ds.prompt_id(text, neg_text)
        for j0 in range(0, seeds_per_prompt, batch_size):
            s = ds.trajectory_seed(seed, pid, j0)
            rows = min(batch_size, seeds_per_prompt - j0)
            if ds.shard_of(pid, j0, shard[1]) != shard[0]:
                others += rows
                continue
            done = [b for b in range(rows) if ds.item_key(pid, s, b) in done_keys]
            if len(done) == rows:
                skipped.extend(f"{text}|{s}|{b}" for b in done)
            else:  # a call records all its rows; rows already there are kept (first recording wins)
                todo.append((text, s, rows))
    return Plan(folder, header, todo, skipped, others)


def collect_batch(model, prompts: list[str], negative_prompt: str, encode: Callable[[str], list], *, seeds_per_prompt: int,
                  seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, width: int, height: int,
                  dataset_name: str, store_x: bool, on_item_done: Callable | None = None, batch_size: int = 1,
                  text: NodeText | None = None, shard_index: int = 0, shard_count: int = 1,
                  steer_with=None) -> BatchResult:
    """Sample every (prompt, seed) pair not yet in the dataset with recording on. encode(text) -> CONDITIONING.

    steer_with: a weak model (core2.weak.WeakModel) the pictures follow instead of CFG: every step is a CoRe² fast
    step (the weak model's guided prediction moves the latent) while both passes still run and are recorded, so the
    dataset holds the states the weak model's own sampling reaches. An experiment (bench/steered.py: no gain on the
    toy world at the demo's budget), so the node does not offer it.

    batch_size trajectories of one prompt run together as the rows of one latent batch (faster, more memory):
    the j-th trajectory of a prompt is row j % batch_size of the call seeded with ds.trajectory_seed(seed, pid, j0),
    j0 = j − j % batch_size. text: where to show progress on the node. shard_index / shard_count: collect only this
    shard's part (ds.shard_of), e.g. one shard per ComfyUI server writing into one dataset on a shared folder."""
    _check_settings(model, prompts, cfg, steps, seeds_per_prompt, batch_size, sampler_name, scheduler, width, height)
    ds.check_shard(shard_index, shard_count)
    plan = plan_batch(model, prompts, negative_prompt, seeds_per_prompt=seeds_per_prompt, seed=seed, width=width,
                      height=height, dataset_name=dataset_name, batch_size=batch_size,
                      shard=(int(shard_index), int(shard_count)))
    h, w = plan.header["latent_hw"]
    evals_per_step = 2 if sampler_name in _TWO_EVAL else 1
    need = ds.estimate_dataset_bytes(plan.n_todo, steps * evals_per_step, plan.header["latent_channels"], h, w,
                                     store_x) + len(prompts) * 2 * 2**20
    check_free_space(plan.folder.parent, need, f"collecting {plan.n_todo} trajectories into dataset '{plan.folder.name}'")
    if plan.skipped:
        log.info("CoRe² Collect Batch: %d of %d trajectories are already in '%s'; collecting the other %d.",
                 len(plan.skipped), len(plan.skipped) + plan.n_todo, plan.folder.name, plan.n_todo)
    result = BatchResult(plan.folder, [], list(plan.skipped), None, 0, plan.other_shards)
    if not plan.todo:
        return result
    plan.folder.mkdir(parents=True, exist_ok=True)
    settings = {"source": "CoRe2CollectBatch", "sampler": sampler_name, "scheduler": scheduler, "steps": int(steps),
                "cfg": float(cfg), "width": int(width), "height": int(height)}
    if steer_with is not None:
        settings["steered_by"] = str(getattr(steer_with, "name", "weak model"))
    session = CollectSession(plan.folder, model_header(model), store_x=store_x, known_cfg=float(cfg))
    failed = True
    try:
        _sample_plan(model, session, plan, negative_prompt or "", encode, steps, cfg, sampler_name, scheduler,
                     settings, result, on_item_done, text, steer_with)
        failed = False
    finally:
        # commits every finished item, also when cancelled; writer errors are raised unless another error is
        # already on its way
        session.recorder.close(raise_errors=not failed)
    result.written = list(session.sink.written)
    result.evaluations = session.recorder.stats["evaluations"]
    return result


def _steered_sample(wrapped, weak, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent, seed,
                    callback):
    """One sampling call whose every step is a CoRe² fast step of `weak` (the recorder on `wrapped` makes the guider
    run and hand it the unconditional pass as well: nodes/guider.py records_guidance)."""
    from .guider import CoRe2CFGGuider  # the guider module needs comfy.samplers.CFGGuider (not at import time)

    schedule = comfy.samplers.KSampler(wrapped, steps=steps, device=wrapped.load_device, sampler=sampler_name,
                                       scheduler=scheduler, denoise=1.0, model_options=wrapped.model_options).sigmas
    guider = CoRe2CFGGuider(wrapped, weak, w2s_scale=1.0, slow_steps=0)
    guider.scheduler_name, guider.report_runs = scheduler, False
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent, comfy.samplers.sampler_object(sampler_name), schedule, callback=callback,
                         disable_pbar=True, seed=seed)


def _sample_plan(model, session, plan: Plan, neg_text, encode, steps, cfg, sampler_name, scheduler, settings,
                 result: BatchResult, on_item_done, text: NodeText | None, steer_with=None) -> None:
    """The sampling loop: one recorded sampling call per plan entry; result.latent = the last sample."""
    wrapped = session.wrap(model, run_markers=False)
    ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler,
                                 denoise=1.0, model_options=model.model_options)
    schedule = ks.sigmas.detach().cpu()
    c, (h, w) = plan.header["latent_channels"], plan.header["latent_hw"]
    pbar = comfy.utils.ProgressBar(len(plan.todo) * steps)
    neg_cond = encode(neg_text)
    cache: tuple = (None, None)
    prompt_no = {t: k + 1 for k, t in enumerate(dict.fromkeys(t for t, _, _ in plan.todo))}
    for i, (prompt, s, rows) in enumerate(plan.todo):
        comfy.model_management.throw_exception_if_processing_interrupted()
        if text is not None:
            text.show(f"prompt {prompt_no[prompt]}/{len(prompt_no)}: {prompt[:60]}\n"
                      f"{len(session.sink.written)} new, {len(plan.skipped)} already present")
        if cache[0] != prompt:
            cache = (prompt, encode(prompt))
        latent = torch.zeros(rows, c, h, w)
        noise = comfy.sample.prepare_noise(latent, s)

        def callback(step, x0, x, total, _base=i * steps):
            pbar.update_absolute(_base + min(step + 1, steps))
            comfy.model_management.throw_exception_if_processing_interrupted()

        session.recorder.begin_run({"seed": s, "prompt": (prompt, neg_text), "schedule": schedule, "settings": settings,
                                    "features": (conditioning.features(cache[1]), conditioning.features(neg_cond))})
        try:
            if steer_with is None:
                samples = comfy.sample.sample(wrapped, noise, steps, cfg, sampler_name, scheduler, cache[1], neg_cond,
                                              latent, disable_pbar=True, seed=s, callback=callback)
            else:
                samples = _steered_sample(wrapped, steer_with, noise, steps, cfg, sampler_name, scheduler, cache[1],
                                          neg_cond, latent, s, callback)
        except BaseException:
            session.recorder.abort_run()
            raise
        session.recorder.end_run(wait=False)
        result.latent = samples
        pbar.update_absolute((i + 1) * steps)
        if on_item_done is not None:
            on_item_done(i, prompt, s)


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


def batch_report(res: BatchResult) -> str:
    """The text the node shows when it is done."""
    shards = f" ({res.other_shards} left to the other shards)" if res.other_shards else ""
    if not res.written and res.skipped:
        mine = " of this shard" if shards else ""
        return (f"nothing new: all {len(res.skipped)} trajectories{mine} are already in {res.folder.name}{shards} "
                "(raise seeds_per_prompt, add prompts or change seed to collect more)")
    return f"{len(res.written)} new, {len(res.skipped)} already present in {res.folder.name}{shards}"


# ---------------------------------------------------------------------------------------------------------------
# the node


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
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, **FIXED_SEED, "tooltip":
                                 "Base seed. Each prompt gets its own seeds, derived from this one and the prompt text "
                                 "(stable when you add or reorder prompts). Keep it to resume or extend a dataset; "
                                 "a new value collects new trajectories."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Must be > 1. The weak model learns CFG at this scale."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
                "width": ("INT", {"default": 1024, "min": 16, "max": 8192, "step": 8, "tooltip":
                                  "Image width in pixels, counted as ComfyUI's Empty Latent Image counts them. A model "
                                  "made for one size only says which (toy worlds: 128)."}),
                "height": ("INT", {"default": 1024, "min": 16, "max": 8192, "step": 8, "tooltip":
                                   "Image height in pixels (see width)."}),
                "dataset_name": ("STRING", {"default": "core2_dataset"}),
                "store_x": ("BOOLEAN", {"default": True, "tooltip": "Store the noisy latent x_t of each step (1.5x the disk space). Keep it on: the weak model trained on it transfers to new seeds far better; off only to save disk."}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Only to decode the preview image."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip":
                               "Trajectories of one prompt sampled together as one latent batch: faster (about 2x at 4 "
                               "on small models), needs batch_size times the memory. Changing it later samples new "
                               "noises rather than resuming the old ones."}),
                "shard_index": ("INT", {"default": 0, "min": 0, "max": 4095, "tooltip":
                                "Several servers, one dataset: queue the same workflow on each with its own "
                                "shard_index (0 … shard_count − 1) and a shared output folder; together they collect "
                                "exactly what one server would. 0 with shard_count 1: everything here."}),
                "shard_count": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip":
                                "How many servers share this collection (1: this one collects everything)."}),
            },
            **HIDDEN,
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
                scheduler, width, height, dataset_name, store_x, vae=None, batch_size=1, shard_index=0, shard_count=1,
                unique_id=None):
        items = parse_prompt_lines(prompts)
        if prompts_file and prompts_file != self.NONE_FILE:
            items += [p for p in read_prompt_file(prompts_file) if p not in items]
        res = collect_batch(model, items, negative_prompt, lambda t: encode_text(clip, t), seeds_per_prompt=seeds_per_prompt,
                            seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, width=width,
                            height=height, dataset_name=dataset_name, store_x=store_x, batch_size=int(batch_size),
                            text=NodeText(unique_id), shard_index=int(shard_index), shard_count=int(shard_count))
        if res.latent is None:
            image = torch.zeros(1, height, width, 3)
        elif vae is not None:
            image = vae.decode(res.latent)
            if image.ndim == 5:
                image = image.reshape(-1, *image.shape[-3:])
        else:
            image = latent_preview_image(model, res.latent, model_info.latent_downscale(model))
        log.info("CoRe² Collect Batch: %d new trajectories, %d already present, dataset %s", len(res.written),
                 len(res.skipped), res.folder)
        return with_text(batch_report(res), (image, res.folder.name), unique_id)


NODE_CLASS_MAPPINGS = {"CoRe2CollectBatch": CoRe2CollectBatch}
NODE_DISPLAY_NAME_MAPPINGS = {"CoRe2CollectBatch": "CoRe² Collect Batch"}
