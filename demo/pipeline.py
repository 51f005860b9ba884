"""The pieces the demo and the benchmark share: load ComfyUI and the pack, collect, train, sample, count, score.

Everything runs on the toy world (toy/world.py): a real ComfyUI UNetModel, small enough for a CPU.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui_core2"
log = logging.getLogger("core2.demo")


@dataclass
class DemoConfig:
    """Sizes of the demo run. On 1 CPU thread the defaults collect in about 2 minutes and train in about 3 (tiny weak
    model: it scored as small on the toy at half the training time and a cheaper fast step; README "Tiny against
    small")."""
    prompts: int = 120  # toy prompts collected (the toy world has 120)
    seeds_per_prompt: int = 4
    collect_batch: int = 4  # trajectories per sampling call while collecting
    collect_seed: int = 1000  # collected seeds: collect_seed .. collect_seed + seeds_per_prompt - 1
    steps: int = 20
    cfg: float = 5.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    train_steps: int = 5000
    train_batch: int = 32
    train_lr: float = 1e-3
    size: str = "tiny"
    memory: bool = True  # the weak model remembers the latest slow step's guidance (core2/arch.py)
    val_fraction: float = 0.1
    w2s_scale: float = 1.5
    eval_samples: int = 60  # held-out (prompt, seed) samples per method in the report
    eval_seed: int = 500_000  # evaluation seeds start here (never collected)
    grid_prompts: tuple = ("a red triangle at the top", "a blue cross in the centre", "a yellow circle on the left",
                           "a magenta square at the bottom", "a green triangle on the right",
                           "a cyan circle at the bottom")
    grid_seed: int = 900_000
    grid_scale: int = 4
    dataset_name: str = "toy_demo"
    model_name: str = "toy_demo_tiny"
    world: str = "shapes"  # toy world (toy/world.py WORLDS): "shapes" (v1) or "scenes"


# ---------------------------------------------------------------------------------------------------------------
# environment


def setup(out_dir: Path, threads: int = 1):
    """Activate ComfyUI, load the pack as ComfyUI does (package `comfyui_core2`), point its folders at out_dir."""
    torch.set_num_threads(threads)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CORE2_HOME"] = str(out_dir)
    for p in (str(ROOT),):
        if p not in sys.path:
            sys.path.insert(0, p)
    from tools import comfy_env

    inst = comfy_env.activate()
    pack = comfy_env.load_pack(PACK_NAME)
    import comfy.utils

    if hasattr(comfy.utils, "PROGRESS_BAR_ENABLED"):  # one log line per run is enough here
        comfy.utils.PROGRESS_BAR_ENABLED = False
    from comfyui_core2.nodes import paths

    if paths.folder_paths is not None:  # full ComfyUI: its own folder registry
        paths.folder_paths.set_output_directory(str(out_dir / "output"))
    return inst, pack


def toy_prompts(n: int, seed: int = 0, world: str = "shapes") -> list[str]:
    from comfyui_core2.toy.judge import judge

    return judge(world).prompt_list(n, seed)


def world_model(world: str = "shapes"):
    """A fresh ModelPatcher of the shipped model of a toy world."""
    from comfyui_core2.toy import world as toy_world

    return toy_world.load_toy_model(toy_world.spec(world).weights)


# ---------------------------------------------------------------------------------------------------------------
# Collect and Reflect


def collect(out_dir: Path, cfg: DemoConfig, steer_with=None) -> dict:
    """Collect (resumable): every (prompt, seed) pair not yet in the dataset is sampled with recording on.
    steer_with: a weak model the pictures follow (a steered second round, nodes/collect_batch.py)."""
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect_batch as collect_nodes, paths
    from comfyui_core2.toy import world

    spec = world.spec(cfg.world)
    model = world_model(cfg.world)
    prompts = toy_prompts(cfg.prompts, world=cfg.world)
    t0 = time.perf_counter()
    res = collect_nodes.collect_batch(model, prompts, world.UNCOND_PROMPT, lambda p: world.encode(p, spec.weights),
                                      seeds_per_prompt=cfg.seeds_per_prompt, seed=cfg.collect_seed, steps=cfg.steps,
                                      cfg=cfg.cfg, sampler_name=cfg.sampler_name, scheduler=cfg.scheduler,
                                      width=spec.node_size, height=spec.node_size, dataset_name=cfg.dataset_name,
                                      store_x=True, batch_size=cfg.collect_batch, steer_with=steer_with)
    seconds = time.perf_counter() - t0
    folder = paths.datasets_dir() / cfg.dataset_name
    reader = ds.DatasetReader(folder)
    info = {"folder": str(folder), "items": len(reader.items), "prompts": len(reader.prompt_ids()),
            "samples": int(reader.n_samples), "collected_now": len(res.written), "reused": len(res.skipped),
            "seconds_this_run": round(seconds, 2),
            "bytes": sum(p.stat().st_size for p in folder.glob("*") if p.is_file())}
    state = _state(out_dir)
    if res.written:  # keep the time of the run that collected most of it
        state["collect_seconds"] = state.get("collect_seconds", 0.0) + seconds
        _save_state(out_dir, state)
    info["seconds_total"] = round(state.get("collect_seconds", seconds), 2)
    return info


def weak_model_path(out_dir: Path, cfg: DemoConfig) -> Path:
    return Path(out_dir).resolve() / "models" / "core2" / f"{cfg.model_name}.safetensors"


def train(out_dir: Path, cfg: DemoConfig, dataset_folder: str) -> tuple[object, dict]:
    """Reflect (resumable): reuse a complete model file, resume an incomplete one, else train from scratch."""
    from comfyui_core2.core2 import train as trainer
    from comfyui_core2.core2.dataset import manifest_hash
    from comfyui_core2.core2.weights_io import load_weak_model, read_metadata

    out = weak_model_path(out_dir, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = trainer.partial_path(out)  # an interrupted run's checkpoint (the finished model is only in `out`)
    meta = read_metadata(out) if out.is_file() else read_metadata(partial) if partial.is_file() else {}
    tr = meta.get("training", {})
    same_data = meta.get("dataset", {}).get("manifest_hash") == manifest_hash(dataset_folder)
    # files from before the loss setting were trained on "relative"
    same_loss = tr.get("loss", "relative") == trainer.TrainSettings().loss
    same_arch = bool((meta.get("config") or {}).get("memory", False)) == cfg.memory
    done = bool(tr.get("complete")) and int(tr.get("step", 0)) >= cfg.train_steps and same_data and same_loss and same_arch
    if meta and not (same_data and same_loss and same_arch):  # the dataset grew, or the model changed: train afresh
        what = "dataset" if not same_data else "loss" if not same_loss else "guidance-memory setting"
        log.info("the %s changed since %s was trained; training it again", what, out.name)
        for p in (out, trainer.optimizer_path(out), partial, trainer.optimizer_path(partial)):
            p.unlink(missing_ok=True)
    if done and tr.get("size") not in (None, cfg.size):
        raise ValueError(f"{out} holds a '{tr.get('size')}' weak model, the demo asks for '{cfg.size}': delete it or "
                         "choose another --out folder.")
    state = _state(out_dir)
    trained_now = False
    if not done:
        settings = trainer.TrainSettings(steps=cfg.train_steps, batch_size=cfg.train_batch, lr=cfg.train_lr,
                                         size=cfg.size, seed=0, val_fraction=cfg.val_fraction, memory=cfg.memory,
                                         resume=out.is_file() or partial.is_file(), eval_every=max(50, cfg.train_steps // 6),
                                         checkpoint_every=max(50, cfg.train_steps // 6))
        t0 = time.perf_counter()
        r = trainer.train(dataset_folder, out, settings)
        state["train_seconds"] = state.get("train_seconds", 0.0) * settings.resume + time.perf_counter() - t0
        _save_state(out_dir, state)
        log.info("%s", r.summary)
        meta = read_metadata(out)
        trained_now = True
    weak = load_weak_model(out)
    vm = meta.get("val_metrics", {})
    info = {"path": str(out), "size": meta.get("training", {}).get("size"), "steps": meta.get("training", {}).get("step"),
            "best_step": meta.get("training", {}).get("best_step"), "batch_size": cfg.train_batch, "lr": cfg.train_lr,
            "seconds": round(state.get("train_seconds", float("nan")), 2), "trained_now": trained_now,
            "val_rel_err": vm.get("rel_err"), "val_rel_err_median": vm.get("rel_err_median"),
            "val_rel_err_x0": vm.get("rel_err_x0"), "loss": meta.get("training", {}).get("loss", "relative"),
            "validation_on": vm.get("validation_on"),
            "parameters": sum(p.numel() for p in weak.parameters()) if hasattr(weak, "parameters") else None}
    return weak, info


def _state(out_dir) -> dict:
    p = Path(out_dir) / "demo_state.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(out_dir, state: dict) -> None:
    from comfyui_core2.core2.files import atomic_write_json

    atomic_write_json(Path(out_dir) / "demo_state.json", state)


# ---------------------------------------------------------------------------------------------------------------
# Refine: sampling with pass counting


@dataclass
class Method:
    name: str
    kind: str  # "cfg" (ComfyUI's own sampling), "core2" (the CoRe2KSampler node with the trained weak model), or a
    # training-free fill-in in its place (FILL_KINDS: "scheduled-cfg" = cond only, "cfg-reuse" = reuse last guidance)
    cfg: float
    steps: int
    slow_steps: int = 0
    w2s_scale: float = 1.0
    method: str = "core"
    note: str = ""
    role: str = ""  # what the row stands for in a comparison (the benchmark's checks find rows by budget and role)
    placement: str = "first"  # which steps are slow (core2/schedule.py: first, spread, front, or auto for the weak model)

    def as_dict(self) -> dict:
        return asdict(self)


FILL_KINDS = {"scheduled-cfg": "(training-free) cond only", "cfg-reuse": "(training-free) reuse last guidance"}


class PassCounter:
    """Counts base-model passes per image: rows through the diffusion model / batch size (a UNet wrapper)."""

    def __init__(self, model):
        self.rows = 0
        self.model = model.clone()

        def wrapper(apply_model, args):
            self.rows += int(args["input"].shape[0])
            return apply_model(args["input"], args["timestep"], **args["c"])

        self.model.set_model_unet_function_wrapper(wrapper)


def sample(base_model, m: Method, weak, prompts: list[str], seed: int,
           world_name: str = "shapes") -> tuple[torch.Tensor, float, float]:
    """Pictures for prompts (one batch, noise from one seed) with the world's sampler and scheduler:
    IMAGE [B, H, W, 3], model passes per image, seconds."""
    import comfy.sample

    from comfyui_core2.nodes import refine
    from comfyui_core2.toy import world

    spec = world.spec(world_name)
    sampler, scheduler = spec.defaults["sampler_name"], spec.defaults["scheduler"]
    counter = PassCounter(base_model)
    latent = world.empty_latent(len(prompts), world_name)
    pos, neg = world.encode(prompts, spec.weights), world.encode(world.UNCOND_PROMPT, spec.weights)
    t0 = time.perf_counter()
    if m.kind == "cfg":
        noise = comfy.sample.prepare_noise(latent, seed)
        out = comfy.sample.sample(counter.model, noise, m.steps, m.cfg, sampler, scheduler, pos, neg, latent,
                                  disable_pbar=True, seed=seed)
    else:
        if m.kind in FILL_KINDS:
            from comfyui_core2.core2 import fillins

            weak = fillins.make(FILL_KINDS[m.kind])
        (res,) = refine.CoRe2KSampler().sample(counter.model, seed, m.steps, m.cfg, sampler, scheduler, pos, neg,
                                               {"samples": latent}, 1.0, weak, m.w2s_scale, m.slow_steps, m.method,
                                               slow_placement=m.placement)
        out = res["samples"]
    seconds = time.perf_counter() - t0
    return world.decode(out), counter.rows / len(prompts), seconds


def demo_methods(cfg: DemoConfig) -> list[Method]:
    n = cfg.steps
    return [Method("cfg 1", "cfg", 1.0, n, note="no guidance"),
            Method(f"CFG {cfg.cfg:g}", "cfg", cfg.cfg, n),
            Method("CoRe² all-fast", "core2", cfg.cfg, n, 0, 1.0),
            Method("CoRe² mixed", "core2", cfg.cfg, n, n // 2, cfg.w2s_scale, note=f"{n // 2} slow steps",
                   placement="auto"),
            Method("CoRe² all-slow", "core2", cfg.cfg, n, n, cfg.w2s_scale)]


def evaluate(base_model, methods: list[Method], weak, n: int, seed: int, batch: int = 60,
             keep_pictures: bool = False, world_name: str = "shapes") -> list[dict]:
    """Each method on the same n held-out (prompt, seed) samples: accuracy ± its standard error over pictures,
    passes per image, seconds. keep_pictures: each row also carries "_images", "_labels" and "_scores" (the per-picture
    fractions of attributes right, for paired comparisons: every row sees the same prompts and noise)."""
    from comfyui_core2.toy.judge import judge, mean_se

    j = judge(world_name)
    prompts, labels = j.prompt_set(n, 1)
    rows = []
    for m in methods:
        imgs, passes, secs = [], [], 0.0
        for i in range(0, n, batch):
            im, p, s = sample(base_model, m, weak, prompts[i:i + batch], seed + i, world_name)
            imgs.append(im)
            passes.append(p)
            secs += s
        images = torch.cat(imgs)
        ok = j.correct(images, labels)
        acc, scores = j.accuracy(ok), ok.double().mean(1)  # scores: the share of attributes right, per picture
        row = {**m.as_dict(), "passes_per_image": round(sum(passes) / len(passes), 3), "seconds": round(secs, 2),
               "accuracy": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in acc.items()},
               "accuracy_se": round(mean_se(scores), 4), "all_se": round(mean_se((scores == 1).double()), 4)}
        if keep_pictures:
            row["_images"], row["_labels"], row["_scores"] = images, labels, scores
        rows.append(row)
        log.info("%-16s passes/image %5.1f  accuracy %.3f ± %.3f  (%.1f s)", m.name, row["passes_per_image"],
                 acc["mean"], row["accuracy_se"], secs)
    return rows


def config_dict(cfg: DemoConfig) -> dict:
    d = asdict(cfg)
    d["grid_prompts"] = list(cfg.grid_prompts)
    return d


__all__ = ["DemoConfig", "Method", "setup", "collect", "train", "sample", "evaluate", "demo_methods", "field"]
