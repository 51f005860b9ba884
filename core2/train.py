"""Reflect: train a weak model on a CoRe² trajectory dataset. Plain torch; the ComfyUI node wraps train().

    python -m core2.train --dataset DIR --out FILE.safetensors [--steps --batch-size --lr --size --seed
                          --val-fraction --resume --device]

Objective. The model predicts r̂_u (see arch.py). Two relative errors of that prediction, both 1.0 for the identity
map (cfg = 1) and both the same at every CFG scale g (the (g − 1)² factors cancel):
  "relative"  L_rel = mean_i ‖r̂_u,i − r_u,i‖² / max(‖r_c,i − r_u,i‖², 0.01·mean_j ‖r_c,j − r_u,j‖²): per row, so
              every noise level counts equally (the floor keeps near-zero guidance rows from dominating);
  "x0"        L_x0 = Σ_i σ_i²‖r̂_u,i − r_u,i‖² / Σ_i σ_i²‖r_c,i − r_u,i‖²: the error of the guided x0 prediction
              pooled over the batch, so rows count by how much CFG moves the image there: the high-noise steps,
              where guidance decides layout, shape and colour.
The default "mixed" = (L_rel + L_x0)/2: x0 alone helps all-fast sampling most but leaves the low-noise rows worse
than cfg = 1, which costs mixed slow/fast schedules; relative alone is the reverse (docs/method.md §3; the measured
figures are in the README's "Measured results"). Validation reports both; keep-best and the history use the score of
the chosen loss.

The run goes through four phases (train() below): open the data (open_data), init or resume (init_or_resume), the
loop (run_loop) and finish (keep-best, save, summary); a TrainingRun carries the state from one to the next.

Checkpoints: an unfinished run writes <name>.partial.safetensors every `checkpoint_every` steps and when it is
stopped (metadata training.complete = false; optimizer state in <name>.partial.optim.pt); resume continues from the
newer of it and <name>.safetensors. Only weights that are finite and score a finite validation error are saved. The
finished model goes to <name>.safetensors (optimizer state in <name>.optim.pt) and never replaces a finished model
there that scores better on this run's validation items (the new weights then stay in the .partial file).

Several processes: `torchrun --nproc_per_node=N -m core2.train ...` (core2/distributed.py). Each rank trains on a
contiguous slice of the global batch a one-process run draws, the loss split so that DistributedDataParallel's
averaged gradient is the whole batch's (sharded_training_loss); rank 0 alone validates and writes files; the files
hold the global step only, so a run resumes with any number of processes.
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import __version__, advice, calibration, distributed, guidance
from .arch import SIZES, build, make_config
from .dataset import DatasetError, DatasetReader, manifest_hash
from .distributed import SINGLE, World
from .weak import GuidanceMemory
from .files import atomic_write_bytes
from .weights_io import read_metadata, save_weak_model

log = logging.getLogger(__name__)

HISTORY_POINTS = 2000  # train-loss points kept in the file metadata
KEEP_BEST_MARGIN = 0.005  # keep an earlier step's weights only when they validated > 0.5% better than the last
EVAL_G = (2.0, 3.5, 5.0, 7.5, 10.0)  # scales the validation also reports (besides each row's stored g)


@dataclass
class TrainSettings:
    steps: int = 2000  # total optimizer steps (a resumed run continues up to this count)
    batch_size: int = 16
    lr: float = 3e-4
    size: str = "medium"
    seed: int = 0
    val_fraction: float = 0.1
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 250
    eval_every: int = 250
    max_val_rows: int = 1024
    keep_best: bool = True  # end with the weights that scored best on held-out prompts (guards against overfitting)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    arch_overrides: dict = field(default_factory=dict)
    x_input: bool | None = None  # the net also sees x_t; None: when the dataset stores it (store_x)
    loss: str = "mixed"  # "mixed" | "relative" | "x0" (see the module docstring)
    memory: bool = True  # the net also sees the latest slow step's measured guidance (arch.py; only with x_t input)


class TrainingError(RuntimeError):
    pass


class NonFiniteLossError(TrainingError):
    pass


class OutOfMemoryTrainingError(TrainingError):
    pass


@dataclass
class TrainResult:
    model: torch.nn.Module
    path: Path
    step: int
    history: dict
    metrics: dict
    metadata: dict
    summary: str


def optimizer_path(out_path) -> Path:
    p = Path(out_path)
    return p.with_name(p.stem + ".optim.pt")


def partial_path(out_path) -> Path:
    """Where an unfinished run keeps its checkpoints: <name>.partial.safetensors next to <name>.safetensors."""
    p = Path(out_path)
    return p.with_name(p.stem + ".partial.safetensors")


def _file_state(path: Path) -> tuple[int, bool] | None:
    """(step, complete) of a Reflect file, or None when there is none (or it is unreadable)."""
    try:
        tr = read_metadata(path).get("training") or {} if path.is_file() else None
    except Exception:  # noqa: BLE001 - a damaged file counts as absent here; loading it reports the damage
        return None
    return None if tr is None else (int(tr.get("step", 0)), bool(tr.get("complete")))


def kept_files(out_path) -> str:
    """What is on disk for this save name, for messages: 'kept w.safetensors (complete model, step 250)' etc."""
    parts = []
    for p in (Path(out_path), partial_path(out_path)):
        st = _file_state(p)
        if st is not None:
            parts.append(f"{p.name} ({'complete model' if st[1] else 'unfinished checkpoint'}, step {st[0]})")
    return ("kept " + " and ".join(parts)) if parts else "nothing was saved"


def _resume_source(out_path: Path) -> Path:
    """The file a resume continues from: the unfinished checkpoint when it is further on than the finished model."""
    done, part = _file_state(out_path), _file_state(partial_path(out_path))
    if part is not None and (done is None or part[0] > done[0] or not done[1]):
        return partial_path(out_path)
    return out_path


def _finite_model(model) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def _disk_full(e: BaseException, out_path: Path) -> TrainingError | None:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return TrainingError(f"CoRe² Reflect: the disk holding {out_path.parent} is full; the model could not be saved "
                             f"({kept_files(out_path)}). Free some space and run it again with resume on.")
    return None


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, min(100, total // 20))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


# --- data ---------------------------------------------------------------------------------------------------------
def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _encode(model, b: dict):
    ctx = model.encode_prompts(b["pos_tokens"], b["pos_mask"], b.get("pos_pooled"), b["neg_tokens"], b["neg_mask"],
                               b.get("neg_pooled"), b["has_neg"])
    return ctx[b["prompt_index"]]


_PER_ROW = ("cond", "uncond", "sigma", "cfg", "x", "prompt_index", "mem_delta", "mem_sigma", "mem_has")
MEMORY_NONE = 0.25  # memory models: the share of training rows shown no slow step (all-fast runs, the first steps)


def _predict(model, b: dict) -> torch.Tensor:
    memory = GuidanceMemory(b["mem_delta"], b["mem_sigma"], b["mem_has"]) if "mem_delta" in b else None
    return model.predict_uncond(b["cond"], b["sigma"], _encode(model, b), b.get("x") if model.x_input else None,
                                **({"memory": memory} if getattr(model, "memory", False) else {}))


def memory_rows(picks: list, rng: random.Random) -> list[int]:
    """For memory models: per (item, row) pick, the earlier row of its trajectory standing for the latest slow step,
    uniform over the earlier steps, or −1 (no slow step yet) for a MEMORY_NONE share of rows and at the first step.
    (Rows are the trajectory's steps in sampling order.)"""
    return [-1 if r == 0 or rng.random() < MEMORY_NONE else rng.randrange(r) for _, r in picks]


def _collate(reader: DatasetReader, picks: list, memory: bool, rng: random.Random) -> dict:
    return reader.collate(picks, memory_rows(picks, rng) if memory else None)


def _finite_rows(b: dict) -> torch.Tensor:
    ok = torch.isfinite(b["cond"]).flatten(1).all(1) & torch.isfinite(b["uncond"]).flatten(1).all(1) & torch.isfinite(b["sigma"])
    return ok & torch.isfinite(b["mem_delta"]).flatten(1).all(1) if "mem_delta" in b else ok


def _take(b: dict, keep: torch.Tensor) -> dict:
    return {k: (v[keep] if k in _PER_ROW else v) for k, v in b.items()}


def _row_errors(ru_hat, ru, rc) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the squared error of r̂_u, and the squared guidance ‖r_c − r_u‖² it is measured against."""
    return (ru_hat - ru).flatten(1).pow(2).sum(1), (rc - ru).flatten(1).pow(2).sum(1)


def _relative(num, den) -> torch.Tensor:
    den = torch.maximum(den, 0.01 * den.mean().detach() + 1e-12)
    return (num / den).mean()


def _x0(num, den, sigma) -> torch.Tensor:
    s2 = sigma.reshape(-1).to(num.dtype).pow(2)
    return (num * s2).sum() / (den * s2).sum().clamp_min(1e-12)


def relative_loss(ru_hat, ru, rc) -> torch.Tensor:
    return _relative(*_row_errors(ru_hat, ru, rc))


def x0_loss(ru_hat, ru, rc, sigma) -> torch.Tensor:
    return _x0(*_row_errors(ru_hat, ru, rc), sigma)


LOSSES = ("mixed", "relative", "x0")


def training_loss(kind: str, ru_hat, ru, rc, sigma) -> torch.Tensor:
    num, den = _row_errors(ru_hat, ru, rc)
    if kind == "relative":
        return _relative(num, den)
    if kind == "x0":
        return _x0(num, den, sigma)
    return 0.5 * (_relative(num, den) + _x0(num, den, sigma))


def batch_totals(b: dict, weight: torch.Tensor, world: World) -> torch.Tensor:
    """[rows, Σ‖r_c − r_u‖², Σ σ²‖r_c − r_u‖²] over the rows of weight 1 of the whole global batch (summed over the
    ranks): the batch-wide constants of the two losses. They depend on the data only, not on the model."""
    den = (b["cond"] - b["uncond"]).flatten(1).pow(2).sum(1)
    s2 = b["sigma"].reshape(-1).to(den.dtype).pow(2)
    w = weight.to(den.dtype)
    return world.sum(torch.stack([w.sum(), (w * den).sum(), (w * den * s2).sum()]))


def sharded_training_loss(kind: str, ru_hat, ru, rc, sigma, weight, totals, world: World) -> torch.Tensor:
    """This rank's share of training_loss on the global batch, times the number of ranks: DistributedDataParallel
    averages the gradients over the ranks, so the average is the gradient of training_loss on the whole batch (the
    relative loss's floor and the x0 denominator come from totals, i.e. from all rows). Rows of weight 0 count
    nowhere."""
    num, den = _row_errors(ru_hat, ru, rc)
    n, den_sum, den_s2 = totals.to(num.dtype)
    w, s2 = weight.to(num.dtype), sigma.reshape(-1).to(num.dtype).pow(2)
    rel = (w * num / torch.maximum(den, 0.01 * den_sum / n + 1e-12)).sum() / n
    x0 = (w * num * s2).sum() / den_s2.clamp_min(1e-12)
    loss = rel if kind == "relative" else x0 if kind == "x0" else 0.5 * (rel + x0)
    return loss * world.size


def val_score(metrics: dict, kind: str) -> float | None:
    """The validation number that matches the training loss (lower is better; identity map 1.0)."""
    a, b = metrics.get("rel_err"), metrics.get("rel_err_x0")
    if a is None or b is None:
        return a
    return {"relative": a, "x0": b}.get(kind, 0.5 * (a + b))


def _global_picks(reader: DatasetReader, items, batch_size: int, seed: int, start_epoch: int, memory: bool = False):
    """Every global batch, for ever: its (item, row) picks (a fresh shuffle per epoch, seeded by seed and epoch) and,
    for memory models, the remembered row of each pick (memory_rows, drawn from the epoch's rng), else None. The
    sequence depends only on these arguments, so every process of a distributed run draws the same one."""
    rows = reader.rows(items)
    epoch = start_epoch
    while True:
        order = list(rows)
        rng = random.Random(seed * 1_000_003 + epoch)
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            picks = [(items[i], r) for i, r in order[start:start + batch_size]]
            yield picks, (memory_rows(picks, rng) if memory else None)
        epoch += 1


def _infinite_batches(reader: DatasetReader, items, batch_size: int, seed: int, start_epoch: int, memory: bool = False):
    """The collated global batches of _global_picks (None for a batch whose every item turned out damaged)."""
    for picks, mem in _global_picks(reader, items, batch_size, seed, start_epoch, memory):
        yield reader.collate(picks, mem)


def _val_rows(reader, items, max_rows):
    """A deterministic random subset of the validation rows, so evaluation stays cheap on big datasets. (Every k-th
    row would skip the same steps of every trajectory and bias the score towards some noise levels.)"""
    rows = reader.rows(items)
    if len(rows) > max_rows:
        rows = sorted(random.Random(0).sample(rows, max_rows))
    return rows


@torch.no_grad()
def evaluate(model, reader: DatasetReader, items: list, device, batch_size: int = 32, max_rows: int = 1024,
             n_bins: int = 4, loss: str = "mixed") -> dict:
    """Relative error of the predicted guidance ‖f(r_c) − r_cfg‖ / ‖r_cfg − r_c‖ (identity map: 1.0).

    Pooled over rows (sqrt of summed squares) overall, per σ bin (σ quantiles) and per CFG scale; also the median
    of the per-row errors, the same error in x0 space (rows weighted by σ², "rel_err_x0") and "score", the
    number that matches the training loss `loss` (val_score).
    """
    was = model.training
    model.eval()
    rows = _val_rows(reader, items, max_rows)
    memory, rng = bool(getattr(model, "memory", False)), random.Random(1)
    sig, gs, num, den = [], [], [], []
    per_g = {g: [0.0, 0.0] for g in EVAL_G}
    for start in range(0, len(rows), batch_size):
        b = _collate(reader, [(items[i], r) for i, r in rows[start:start + batch_size]], memory, rng)
        keep = _finite_rows(b) if b is not None else None
        if keep is None or not keep.any():
            continue
        b = _to(_take(b, keep), device)
        ru_hat = _predict(model, b)
        g = b["cfg"].view(-1, 1, 1, 1)
        f, target = guidance.cfg(b["cond"], ru_hat, g), guidance.cfg(b["cond"], b["uncond"], g)
        num.append((f - target).flatten(1).pow(2).sum(1).double().cpu())
        den.append((target - b["cond"]).flatten(1).pow(2).sum(1).double().cpu())
        sig.append(b["sigma"].cpu())
        gs.append(b["cfg"].cpu())
        for gv in EVAL_G:
            fg, tg = guidance.cfg(b["cond"], ru_hat, gv), guidance.cfg(b["cond"], b["uncond"], gv)
            per_g[gv][0] += float((fg - tg).pow(2).sum())
            per_g[gv][1] += float((tg - b["cond"]).pow(2).sum())
    model.train(was)
    if not num:
        return {"rows": 0}
    num, den, sig = torch.cat(num), torch.cat(den), torch.cat(sig)
    s2 = sig.double().pow(2)
    out = {"rows": int(num.numel()), "rel_err": float((num.sum() / den.sum().clamp_min(1e-30)).sqrt()),
           "rel_err_x0": float(((num * s2).sum() / (den * s2).sum().clamp_min(1e-30)).sqrt()),
           "rel_err_median": float((num / den.clamp_min(1e-30)).sqrt().median()), "identity_rel_err": 1.0,
           "cfg_in_data": sorted({round(float(v), 4) for v in torch.cat(gs)})}
    qs = torch.quantile(sig.double(), torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)).tolist()
    bins = []
    for i in range(n_bins):
        lo, hi = qs[i], qs[i + 1]
        m = (sig >= lo) & ((sig <= hi) if i == n_bins - 1 else (sig < hi))
        if m.any():
            bins.append({"sigma_lo": round(lo, 5), "sigma_hi": round(hi, 5), "rows": int(m.sum()),
                         "rel_err": float((num[m].sum() / den[m].sum().clamp_min(1e-30)).sqrt())})
    out["by_sigma"] = bins
    out["by_cfg"] = {str(g): math.sqrt(n / d) if d > 0 else None for g, (n, d) in per_g.items()}
    out["loss"] = loss
    out["score"] = val_score(out, loss)
    return out


@torch.no_grad()
def measure_guidance_gain(model, reader: DatasetReader, items: list, device, batch_size: int = 32,
                          max_rows: int = 4096):
    """calibration.measure on the validation rows as the model sees them on a step with no slow step to remember
    (memory models: every row without memory; plain models: every row). None when too few rows."""
    was = model.training
    model.eval()
    rows, memory = _val_rows(reader, items, max_rows), bool(getattr(model, "memory", False))
    sig, true_e, pred_e = [], [], []
    for start in range(0, len(rows), batch_size):
        picks = [(items[i], r) for i, r in rows[start:start + batch_size]]
        b = reader.collate(picks, [-1] * len(picks) if memory else None)
        keep = _finite_rows(b) if b is not None else None
        if keep is None or not keep.any():
            continue
        b = _to(_take(b, keep), device)
        ru_hat = _predict(model, b)
        true_e.append((b["cond"] - b["uncond"]).flatten(1).pow(2).sum(1).cpu())
        pred_e.append((b["cond"] - ru_hat).flatten(1).pow(2).sum(1).cpu())
        sig.append(b["sigma"].reshape(-1).cpu())
    model.train(was)
    return calibration.measure(torch.cat(sig), torch.cat(true_e), torch.cat(pred_e)) if sig else None


# --- dataset facts ------------------------------------------------------------------------------------------------
def _dataset_facts(reader: DatasetReader) -> dict:
    prompts = reader.manifest.get("prompts", {})
    used = {it["prompt_id"] for it in reader.items}
    shapes = [prompts[p]["shapes"] for p in used if p in prompts]
    if not shapes:
        raise DatasetError(f"CoRe²: dataset {reader.folder.name} has trajectories but no prompt features; it is damaged.")
    dims = {tuple(s["pos_tokens"][1:]) for s in shapes}
    if len(dims) != 1:
        raise DatasetError(f"CoRe²: dataset {reader.folder.name} mixes text features of different widths {sorted(dims)}.")
    pooled = {s.get("pos_pooled", [0])[-1] for s in shapes}
    cfgs = set()
    for it in reader.items:
        if "cfgs" in it or reader.usable(it):  # listed in the log, or read from the shard (skipped when damaged)
            cfgs.update(reader.cfgs(it))
    h = reader.header
    return {"token_dim": int(next(iter(dims))[-1]), "pooled_dim": int(max(pooled)), "cfg": sorted(cfgs),
            "family": h.get("family", "any"), "prediction": h.get("prediction"),
            "latent_channels": int(h["latent_channels"]),
            "base_model": {"name": h.get("base_model_name") or h.get("base_model"), "key_hash": h.get("base_model_hash"),
                           "family": h.get("family")}}


def _check_data_sane(reader: DatasetReader, items: list) -> dict:
    """The first training item that reads (checked against the header); DatasetError when none does."""
    for it in items:
        b = reader.collate([(it, 0)])
        if b is None:
            continue  # damaged: the reader skipped it (and said so)
        if b["cond"].shape[1] != reader.header["latent_channels"]:
            raise DatasetError(f"CoRe²: dataset {reader.folder.name}: stored latents disagree with the header.")
        return it
    raise DatasetError(f"CoRe²: dataset {reader.folder.name} has no readable training item (every one is damaged). "
                       "Run the same CoRe² Collect again: it collects damaged items again.")


# --- checkpoints --------------------------------------------------------------------------------------------------
def _save_checkpoint(out_path: Path, model, opt, step: int, meta: dict, complete: bool) -> None:
    """Write the weights (and the optimizer state beside them) to out_path, or to its .partial file if not complete."""
    if not complete:
        out_path = partial_path(out_path)
    meta = dict(meta)
    meta["training"] = {**meta["training"], "step": step, "complete": complete}
    buf = io.BytesIO()
    torch.save({"step": step, "optimizer": opt.state_dict()}, buf)
    atomic_write_bytes(optimizer_path(out_path), buf.getvalue())
    save_weak_model(out_path, model, meta)


def _scores_finite(model, metrics: dict) -> bool:
    score = metrics.get("score")
    return _finite_model(model) and (not metrics.get("rows") or (score is not None and math.isfinite(score)))


def _old_model_wins(out_path: Path, new_score, evaluate_model) -> tuple[bool, dict | None]:
    """(True, its metrics) when out_path holds a finished model that scores at least as well as new_score on this
    run's validation items (evaluate_model(model) -> metrics); the new weights must not replace it then."""
    st = _file_state(out_path)
    if st is None or not st[1]:
        return False, None
    try:
        from .weights_io import load_weak_model

        old = load_weak_model(out_path)
        metrics = evaluate_model(old)
    except Exception:  # noqa: BLE001 - an unreadable old file is no better than the new one
        log.warning("CoRe² Reflect: could not evaluate the existing %s; replacing it", out_path.name, exc_info=True)
        return False, None
    score = metrics.get("score")
    wins = score is not None and math.isfinite(score) and (new_score is None or score <= new_score)
    return wins, metrics


def _downsample(points: list, n: int) -> list:
    if len(points) <= n:
        return list(points)
    k = len(points) / n
    return [points[int(i * k)] for i in range(n)] + [points[-1]]


# --- the run: open data, init or resume, loop, finish -------------------------------------------------------------
def train(dataset_dir, out_path, settings: TrainSettings, on_step: Callable | None = None,
          check_cancel: Callable | None = None, world: World = SINGLE) -> TrainResult:
    """Train (or resume) a weak model; returns the trained model, its metrics and a summary.

    on_step(step, total, loss) is called after every optimizer step; check_cancel() before each step. Either may
    raise to stop: the state after the last completed step is saved to the .partial checkpoint (when finite), then
    the exception propagates. A finished model already at out_path is never replaced by an unfinished or worse one.

    world: the processes of a distributed run (core2/distributed.py; settings.device is this process's device).
    Every rank trains on its slice of each global batch; rank 0 alone validates and writes files.
    """
    _check_settings(settings)
    distributed.check_batch_size(settings.batch_size, world)
    data = open_data(dataset_dir, settings)
    run = init_or_resume(data, Path(out_path), settings, world)
    run_loop(run, on_step, check_cancel)
    return finish(run)


def _check_settings(s: TrainSettings) -> None:
    if s.size not in SIZES:
        raise ValueError(f"CoRe²: size must be one of {', '.join(SIZES)}, not {s.size!r}.")
    if s.loss not in LOSSES:
        raise ValueError(f"CoRe²: loss must be one of {', '.join(LOSSES)}, not {s.loss!r}.")
    if s.steps < 1 or s.batch_size < 1 or not (s.lr > 0) or not (0 <= s.val_fraction < 1):
        raise ValueError("CoRe²: steps and batch size must be ≥ 1, the learning rate > 0 and the validation fraction in [0, 1).")


# --- phase 1: open the data ---------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """The dataset as one run sees it: its facts, the train / validation split and whether the net sees x_t."""

    reader: DatasetReader
    facts: dict
    train_items: list
    val_items: list
    val_label: str  # what validation is measured on ("held-out prompts and seeds", ...)
    has_x: bool  # every training item stores x_t
    x_input: bool  # a new model takes x_t as input
    manifest_hash: str
    stand_in: dict  # a readable training item (a distributed rank with no usable row of its own runs its first row)

    @property
    def held_out(self) -> bool:
        return self.val_label.startswith("held-out")


def open_data(dataset_dir, s: TrainSettings) -> TrainingData:
    """Read and check the dataset, split it; raises DatasetError for empty, foreign or unusable folders."""
    reader = DatasetReader(dataset_dir)
    facts = _dataset_facts(reader)
    train_items, val_items = reader.split(s.val_fraction, seed=s.seed)
    if not train_items:
        raise DatasetError(f"CoRe²: dataset {reader.folder.name} leaves no training prompts; lower the validation fraction.")
    stand_in = _check_data_sane(reader, train_items)
    val_label = "held-out prompts" if reader.seed_overlap(train_items, val_items) else "held-out prompts and seeds"
    if not val_items:
        val_items, val_label = train_items, "training prompts (no held-out prompts: val_fraction is 0 or one prompt)"
    has_x = reader.has_x(train_items)
    x_input = has_x if s.x_input is None else bool(s.x_input)
    if x_input and not has_x:
        raise DatasetError(f"CoRe²: x_t input was asked for, but dataset {reader.folder.name} does not store x_t. "
                           "Collect with store_x on, or train without x_t input.")
    return TrainingData(reader, facts, train_items, val_items, val_label, has_x, x_input, manifest_hash(reader.folder),
                        stand_in)


# --- phase 2: init or resume ----------------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """What the phases of one run share and change: the model and optimizer, the step, history, notes, the best
    validated weights and what was last saved."""

    data: TrainingData
    settings: TrainSettings
    out_path: Path
    src: Path  # the file a resume continued from (out_path for a new model)
    device: torch.device
    config: dict
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    step: int
    history: dict
    notes: list
    meta: dict = field(default_factory=dict)
    start_step: int = 0
    last_saved: int = 0
    last_metrics: dict = field(default_factory=dict)
    best: dict = field(default_factory=lambda: {"err": math.inf, "step": None, "state": None, "metrics": None})
    t0: float = field(default_factory=time.time)
    n_params: int = 0  # of the model trained (the summary names it even when an older file is kept)
    world: World = SINGLE
    forward: Callable | None = None  # batch -> predicted r_u, through DistributedDataParallel when distributed

    def validate(self, max_rows: int | None = None, model=None) -> dict:
        """evaluate() on this run's validation items, scored for its loss."""
        s = self.settings
        return evaluate(self.model if model is None else model, self.data.reader, self.data.val_items, self.device,
                        s.batch_size * 2, s.max_val_rows if max_rows is None else max_rows, loss=s.loss)

    def note_best(self, metrics: dict) -> None:
        err = metrics.get("score")
        if self.settings.keep_best and self.data.held_out and err is not None and err < self.best["err"]:
            self.best.update(err=err, step=self.step, metrics=dict(metrics),
                             state={k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()})

    def full_meta(self, metrics: dict) -> dict:
        return {**self.meta, "val_metrics": metrics,
                "history": {"train": _downsample(self.history["train"], HISTORY_POINTS), "val": self.history["val"]}}

    def checkpoint(self) -> None:
        """Save the unfinished state to the .partial file, only when the weights and a validation at this step
        are finite (a diverging run must not leave its weights as a 'good' checkpoint)."""
        validated_now = self.history["val"] and self.history["val"][-1][0] == self.step
        metrics = self.last_metrics if validated_now else self.validate(min(self.settings.max_val_rows, 256))
        if not _scores_finite(self.model, metrics):
            log.warning("CoRe² Reflect: step %d not saved: its weights or validation score (%s) are not finite; %s",
                        self.step, metrics.get("score"), kept_files(self.out_path))
            return
        _save_checkpoint(self.out_path, self.model, self.opt, self.step, self.full_meta(metrics), complete=False)
        self.last_saved = self.step


def init_or_resume(data: TrainingData, out_path: Path, s: TrainSettings, world: World = SINGLE) -> TrainingRun:
    """A new model, or the newer of out_path's finished model and unfinished checkpoint with its optimizer state."""
    exists = out_path.is_file() or partial_path(out_path).is_file()
    if exists and not s.resume and not s.overwrite:
        raise FileExistsError(f"CoRe²: {out_path.name} already exists ({kept_files(out_path)}). Turn on resume to "
                              "continue training it, or choose another name.")
    resume = exists and s.resume
    src = _resume_source(out_path) if resume else out_path
    device = torch.device(s.device)
    notes: list[str] = []
    torch.manual_seed(s.seed)
    if resume:
        meta_old = _resumable_metadata(src, out_path, data, s, notes)
        config, step = meta_old["config"], int(meta_old.get("training", {}).get("step", 0))
        history = meta_old.get("history") or {"train": [], "val": []}
    else:
        config = make_config(s.size, data.facts["latent_channels"], data.facts["token_dim"], data.facts["pooled_dim"],
                             family=data.facts["family"], prediction=data.facts["prediction"], x_input=data.x_input,
                             memory=s.memory and data.x_input,
                             **s.arch_overrides)
        step, history = 0, {"train": [], "val": []}
    model = build(config).to(device)
    if resume:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(src), device=str(device) if device.type != "mps" else "cpu"))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.99))
    if resume:
        _load_optimizer_state(opt, src, step, device, notes)
    notes += _data_notes(data, config)
    run = TrainingRun(data, s, out_path, src, device, config, model, opt, step, history, notes, start_step=step,
                      last_saved=step, n_params=sum(p.numel() for p in model.parameters()), world=world,
                      forward=distributed.wrap(model, _predict, world, device))
    run.meta = _run_metadata(data, s, config)
    if world.distributed:
        run.meta["training"]["processes"] = world.size
    log.info("CoRe² Reflect: %s model (%.2fM parameters) on %s, %d training rows, steps %d→%d", config.get("size"),
             run.n_params / 1e6, device, sum(it["n"] for it in data.train_items), step, s.steps)
    return run


def _resumable_metadata(src: Path, out_path: Path, data: TrainingData, s: TrainSettings, notes: list) -> dict:
    """The metadata of the file a resume continues from, after checking that it fits this dataset."""
    from .weights_io import FORMAT

    meta_old = read_metadata(src)
    if meta_old.get("format") != FORMAT:
        raise ValueError(f"CoRe²: {src.name} is not a Reflect checkpoint; cannot resume it. Choose another name.")
    config = meta_old["config"]
    for k in ("latent_channels", "token_dim", "pooled_dim"):
        if config.get(k) != data.facts[k]:
            raise ValueError(f"CoRe²: cannot resume {out_path.name} on this dataset: its {k} is {config.get(k)}, "
                             f"the dataset's is {data.facts[k]}. Train a new model (another name).")
    if config.get("x_input", False) and not data.has_x:
        raise DatasetError(f"CoRe²: {out_path.name} takes x_t input, but dataset {data.reader.folder.name} does not "
                           "store x_t (collect with store_x on), so it cannot be resumed on it.")
    if config.get("size") != s.size:
        notes.append(f"resumed a '{config.get('size')}' model; the size setting '{s.size}' was ignored")
    if meta_old.get("dataset", {}).get("manifest_hash") != data.manifest_hash:
        notes.append("the dataset changed since the checkpoint (continuing on the new data)")
    return meta_old


def _load_optimizer_state(opt, src: Path, step: int, device, notes: list) -> None:
    op = optimizer_path(src)
    if not op.is_file():
        notes.append("no optimizer state found; restarted it")
        return
    st = torch.load(str(op), map_location=device, weights_only=True)
    if int(st.get("step", -1)) == step:
        opt.load_state_dict(st["optimizer"])
    else:
        notes.append("optimizer state did not match the checkpoint step; restarted it")


def _data_notes(data: TrainingData, config: dict) -> list[str]:
    """What the summary should say about the data: damaged entries skipped, no x_t, validation sharing seeds."""
    notes, reader = [], data.reader
    if reader.skipped:
        notes.append(f"skipped {len(reader.skipped)} damaged dataset entries (each is named in the log; run the same "
                     f"Collect again to collect them again): " + "; ".join(reader.skipped[:3])
                     + (" …" if len(reader.skipped) > 3 else ""))
    if not config.get("x_input", False):
        why = "x_t input was turned off" if data.has_x else "the dataset has no x_t (store_x was off)"
        notes.append(f"{why}: the model sees only the conditional output, which transfers poorly to new noise "
                     "seeds. Collect with store_x on (and train with x_t) for a much better weak model")
    if data.val_label == "held-out prompts" and data.val_items is not data.train_items:
        notes.append("validation shares noise seeds with training (collect ≥ 2 seeds per prompt for an honest score)")
    return notes


def _run_metadata(data: TrainingData, s: TrainSettings, config: dict) -> dict:
    """The file metadata of this run (val_metrics, history, step and completeness are added when saving)."""
    reader, facts = data.reader, data.facts
    return {"dataset": {"name": reader.folder.name, "manifest_hash": data.manifest_hash, "items": len(reader.items),
                        "skipped": len(reader.skipped), "prompts": len(reader.prompt_ids()),
                        "samples": reader.n_samples},
            "base_model": facts["base_model"], "cfg": facts["cfg"], "family": facts["family"],
            "latent_channels": facts["latent_channels"], "prediction": facts["prediction"], "pack_version": __version__,
            "training": {"steps": s.steps, "batch_size": s.batch_size, "lr": s.lr, "seed": s.seed,
                         "val_fraction": s.val_fraction, "size": config.get("size"), "validation_on": data.val_label,
                         "x_input": bool(config.get("x_input", False)), "memory": bool(config.get("memory", False)),
                         "loss": s.loss,
                         "train_prompts": len({it["prompt_id"] for it in data.train_items}),
                         "val_prompts": len({it["prompt_id"] for it in data.val_items})}}


# --- phase 3: the loop --------------------------------------------------------------------------------------------
def run_loop(run: TrainingRun, on_step: Callable | None = None, check_cancel: Callable | None = None) -> None:
    """Optimizer steps up to settings.steps, validating every eval_every and checkpointing every checkpoint_every
    steps. A stop (an exception from on_step, check_cancel or the work) saves the last completed step first."""
    s, data = run.settings, run.data
    rows_per_epoch = max(1, sum(it["n"] for it in data.train_items))
    make = _global_picks if run.world.distributed else _infinite_batches
    batches = make(data.reader, data.train_items, s.batch_size, s.seed, run.step * s.batch_size // rows_per_epoch,
                   bool(getattr(run.model, "memory", False)))
    run.t0 = time.time()
    try:
        while run.step < s.steps:
            if check_cancel is not None:
                check_cancel()
            lv = _sharded_step(run, *next(batches)) if run.world.distributed else _single_step(run, next(batches))
            if lv is None:
                continue
            run.history["train"].append([run.step, lv])
            if run.world.main:
                _validate_and_checkpoint(run)
            if on_step is not None:
                on_step(run.step, s.steps, lv)
    except NonFiniteLossError:
        raise
    except BaseException as e:
        err = _after_stop(run, e)
        if err is None:
            raise
        raise err from e


def _validate_and_checkpoint(run: TrainingRun) -> None:
    """After a step: validate every eval_every steps (and at the last), checkpoint every checkpoint_every steps."""
    s = run.settings
    if run.step % s.eval_every == 0 or run.step == s.steps:
        run.last_metrics = run.validate()
        run.history["val"].append([run.step, run.last_metrics.get("score")])
        run.note_best(run.last_metrics)
    if run.step % s.checkpoint_every == 0 and run.step < s.steps:
        run.checkpoint()


def _single_step(run: TrainingRun, b: dict | None) -> float | None:
    """One step of a one-process run on global batch b; None (no step) when b has no usable row."""
    b = _finite_batch(b) if b is not None else None
    if b is None:
        return None
    s = run.settings
    b = _to(b, run.device)
    return _optimize(run, training_loss(s.loss, _predict(run.model, b), b["uncond"], b["cond"], b["sigma"]))


def _sharded_step(run: TrainingRun, picks: list, mem: list | None) -> float | None:
    """One step of a distributed run: this rank's slice of the global batch picks, through DistributedDataParallel;
    the same step (and the same loss) on every rank. None (no step, on every rank) when no row of the whole
    global batch is usable."""
    b, w = _rank_batch(run, picks, mem)
    b, w = _to(b, run.device), w.to(run.device)
    totals = batch_totals(b, w, run.world)
    if float(totals[0]) == 0:
        return None
    s = run.settings
    loss = sharded_training_loss(s.loss, run.forward(b), b["uncond"], b["cond"], b["sigma"], w, totals, run.world)
    return _optimize(run, loss, float(run.world.sum(loss.detach())) / run.world.size)


def _rank_batch(run: TrainingRun, picks: list, mem: list | None) -> tuple[dict, torch.Tensor]:
    """This rank's contiguous slice of a global batch and its row weights: 1, or 0 for rows that must not count
    (non-finite values, neutralised) and for the stand-in row a rank with no usable row of its own runs so that it
    stays in step with the others."""
    lo, hi = run.world.part(len(picks))
    reader = run.data.reader
    b = reader.collate(picks[lo:hi], None if mem is None else mem[lo:hi]) if hi > lo else None
    if b is None:
        return reader.collate([(run.data.stand_in, 0)], None if mem is None else [-1]), torch.zeros(1)
    keep = _finite_rows(b)
    if not keep.all():
        log.warning("CoRe² Reflect: skipping %d dataset row(s) with non-finite values", int((~keep).sum()))
        b = _neutralised(b, keep)
    return b, keep.float()


def _neutralised(b: dict, keep: torch.Tensor) -> dict:
    """b with the per-row values of the rows not kept replaced by harmless finite ones (0, and 1 for σ and cfg)."""
    out = dict(b)
    for k in _PER_ROW:
        if k in out and out[k].is_floating_point():
            v = out[k].clone()
            v[~keep] = 1.0 if k in ("sigma", "mem_sigma", "cfg") else 0.0
            out[k] = v
    return out


def _finite_batch(b: dict) -> dict | None:
    """The batch without rows holding non-finite values (warned about); None when none is left."""
    keep = _finite_rows(b)
    if keep.all():
        return b
    log.warning("CoRe² Reflect: skipping %d dataset row(s) with non-finite values", int((~keep).sum()))
    return _take(b, keep) if keep.any() else None


def _optimize(run: TrainingRun, loss: torch.Tensor, lv: float | None = None) -> float:
    """One optimizer step on loss; returns the loss value lv (of the global batch: float(loss) by default). A
    non-finite loss stops the run before the update."""
    s = run.settings
    for g in run.opt.param_groups:
        g["lr"] = _lr_at(run.step, s.steps, s.lr)
    lv = float(loss.detach()) if lv is None else lv
    if not math.isfinite(lv):
        kept = kept_files(run.out_path)
        raise NonFiniteLossError(
            f"CoRe² Reflect stopped: the loss became {lv} at step {run.step + 1}; nothing of this step was saved. "
            + (f"On disk: {kept}. Lower the learning rate (e.g. ÷3) and resume." if kept != "nothing was saved"
               else "No checkpoint had been written: lower the learning rate (e.g. ÷3) and train again."))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), s.grad_clip)
    run.opt.step()
    run.step += 1
    return lv


def _after_stop(run: TrainingRun, e: BaseException) -> TrainingError | None:
    """After a stop between checkpoints: keep what was learnt (unless the disk is full or memory ran out); the error
    to raise in e's place (None: e itself)."""
    out_path = run.out_path
    if _is_oom(e):
        return OutOfMemoryTrainingError(
            f"CoRe² Reflect ran out of memory on {run.device} at batch size {run.settings.batch_size} "
            f"({run.config.get('size')} model). Lower batch_size, choose a smaller size, or close other GPU work "
            f"({kept_files(out_path)}).")
    disk_full = _disk_full(e, out_path)
    if run.world.main and run.step > run.last_saved and not disk_full:
        try:
            run.checkpoint()
        except Exception:  # noqa: BLE001 - never hide the original reason
            log.exception("CoRe² Reflect: could not save the checkpoint after the stop")
    log.warning("CoRe² Reflect: stopped at step %d; %s. Resume continues from the newer of them.", run.step,
                kept_files(out_path))
    return _disk_full(e, out_path)


# --- phase 4: finish ------------------------------------------------------------------------------------------------
def finish(run: TrainingRun) -> TrainResult:
    """Validate the last step, fall back to the best weights when later steps overfit, and save the finished model
    unless a finished model already there scores better on this run's validation items. In a distributed run rank 0
    does this while the others wait for it; their result has no summary."""
    if not run.world.main:
        run.world.barrier()
        return TrainResult(run.model, run.out_path, run.step, run.history, {}, {}, "")
    result = _finish_main(run)
    run.world.barrier()
    return result


def _finish_main(run: TrainingRun) -> TrainResult:
    _final_validation(run)
    _note_late_skips(run)
    final_meta = run.full_meta(run.last_metrics)
    out_path = run.out_path
    if run.step == run.start_step and run.src == out_path and (_file_state(out_path) or (0, False))[1]:
        run.notes.append(f"{out_path.name} was already trained to step {run.step}; nothing to do (raise steps to go on)")
        run.model.guidance_gain = calibration.GuidanceGain.from_meta(read_metadata(out_path).get("guidance_gain"))
        return _result(run, final_meta)
    _calibrate(run)
    final_meta = run.full_meta(run.last_metrics)
    s = run.settings
    kept_old, old_metrics = (False, None) if s.overwrite and not s.resume else _old_model_wins(
        out_path, run.last_metrics.get("score"), lambda m: run.validate(model=m.to(run.device)))
    try:
        _save_checkpoint(out_path, run.model, run.opt, run.step, final_meta, complete=not kept_old)
    except OSError as e:
        raise (_disk_full(e, out_path) or e) from e
    if kept_old:
        run.notes.append(f"the new weights (step {run.step}, validation {run.last_metrics.get('score'):.4f}) did not "
                         f"beat the finished {out_path.name} (validation {old_metrics['score']:.4f} on the same "
                         f"items): kept it unchanged; the new weights are in {partial_path(out_path).name}")
        from .weights_io import load_weak_model

        run.model = load_weak_model(out_path).to(run.device)
        run.last_metrics = {**old_metrics, "validation_on": run.data.val_label}
    else:
        for p in (partial_path(out_path), optimizer_path(partial_path(out_path))):
            p.unlink(missing_ok=True)
    return _result(run, final_meta)


def _calibrate(run: TrainingRun) -> None:
    """Guidance calibration (core2/calibration.py) of the weights the run ends with, kept in the file's metadata."""
    gain = measure_guidance_gain(run.model, run.data.reader, run.data.val_items, run.device, run.settings.batch_size * 2)
    run.model.guidance_gain = gain
    run.meta["guidance_gain"] = gain.as_meta() if gain is not None else None
    if gain is not None:
        run.notes.append(f"guidance calibrated on {run.data.val_label}: steps with no slow step to go on guide "
                         f"{gain.describe()} as strongly as the raw prediction")


def _note_late_skips(run: TrainingRun) -> None:
    """Damaged items of a big dataset are found as they are read (DatasetReader): count those in the file and
    the summary too (in a distributed run, those this process read)."""
    skipped, counted = run.data.reader.skipped, run.meta["dataset"]["skipped"]
    if len(skipped) > counted:
        run.notes.append(f"found {len(skipped) - counted} more damaged dataset entries while training and left them "
                         "out (each is named in the log): " + "; ".join(skipped[counted:counted + 3])
                         + (" …" if len(skipped) > counted + 3 else ""))
        run.meta["dataset"]["skipped"] = len(skipped)


def _final_validation(run: TrainingRun) -> None:
    """run.last_metrics for the weights the run ends with: the last step's, or an earlier step's that validated
    better by more than KEEP_BEST_MARGIN (keep-best); raises NonFiniteLossError when they are not finite."""
    step, history = run.step, run.history
    if not run.last_metrics or not history["val"] or history["val"][-1][0] != step:
        run.last_metrics = run.validate()
        history["val"] = [v for v in history["val"] if v[0] != step] + [[step, run.last_metrics.get("score")]]
        run.note_best(run.last_metrics)
    run.meta["training"]["best_step"] = step
    best, last = run.best, run.last_metrics
    if best["state"] is not None and best["step"] != step \
            and best["err"] < last.get("score", math.inf) * (1 - KEEP_BEST_MARGIN):
        run.notes.append(f"kept the weights of step {best['step']} (validation {best['err']:.4f}); later steps overfit "
                         f"(step {step}: {last.get('score'):.4f}). Collect more prompts/seeds for a better model")
        run.model.load_state_dict(best["state"])
        run.last_metrics = best["metrics"]
        run.meta["training"]["best_step"] = best["step"]
    run.last_metrics["validation_on"] = run.data.val_label
    if advice.no_better_than_cfg1(run.last_metrics):  # the held-out relative error, not the loss's score
        run.notes.append(f"WARNING: on held-out prompts this model is no better than cfg = 1 (relative error "
                         f"{run.last_metrics['rel_err']:.3f} ≥ 1): the dataset is too small or too varied for it. "
                         "Collect more prompts and seeds.")
    if not _scores_finite(run.model, run.last_metrics):
        raise NonFiniteLossError(f"CoRe² Reflect: the trained weights or their validation score "
                                 f"({run.last_metrics.get('score')}) are not finite, so they were not saved; "
                                 f"{kept_files(run.out_path)}. Lower the learning rate (e.g. ÷3) and train again.")


def _result(run: TrainingRun, final_meta: dict) -> TrainResult:
    model, out_path = run.model, run.out_path
    model.eval()
    model.metadata = read_metadata(out_path)
    model.name = out_path.stem
    cfgs = run.data.facts["cfg"]
    model.trained_cfg = float(cfgs[0]) if len(cfgs) == 1 else None
    summary = make_summary(out_path, run.config, run.n_params, run.step, run.start_step, time.time() - run.t0,
                           run.history, run.last_metrics, run.meta, run.notes)
    return TrainResult(model, out_path, run.step, run.history, run.last_metrics, final_meta, summary)


def make_summary(out_path, config, n_params, step, start_step, seconds, history, metrics, meta, notes) -> str:
    lines = [f"CoRe² weak model: {Path(out_path).name}",
             f"architecture: {config['arch']} ({config.get('size')}, {n_params / 1e6:.2f}M parameters"
             + (", guidance memory" if config.get("memory") else "") + ")",
             f"dataset: {meta['dataset']['name']} ({meta['dataset']['prompts']} prompts, {meta['dataset']['samples']} "
             f"samples), cfg {meta['cfg']}, base model {meta['base_model'].get('name')} [{meta['base_model'].get('key_hash')}]",
             f"steps: {start_step} → {step} in {seconds:.1f} s"]
    if history["train"]:
        tail = [v for _, v in history["train"][-50:]]
        lines.append(f"train loss (last {len(tail)}): {sum(tail) / len(tail):.4f}  (1.0 = identity map)")
    if metrics.get("rows"):
        lines.append(f"validation ({metrics.get('validation_on', '')}, {metrics['rows']} rows): relative error "
                     f"{metrics['rel_err']:.4f} (median {metrics['rel_err_median']:.4f}; identity map = 1.0)")
        if config.get("memory"):
            lines.append(f"  (measured with the latest slow step remembered on {1 - MEMORY_NONE:.0%} of rows, drawn "
                         "from the earlier steps)")
        if metrics.get("rel_err_x0") is not None:
            lines.append(f"  in x0 space (rows weighted by σ²): {metrics['rel_err_x0']:.4f}; score for the "
                         f"{metrics.get('loss', 'relative')} loss: {metrics['score']:.4f}")
        for b in metrics.get("by_sigma", []):
            lines.append(f"  σ {b['sigma_lo']:.3g}–{b['sigma_hi']:.3g}: {b['rel_err']:.4f} ({b['rows']} rows)")
        lines.append("  by CFG scale: " + ", ".join(f"g={g}: {v:.4f}" for g, v in metrics.get("by_cfg", {}).items() if v is not None))
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core2.train", description="Train a CoRe² weak model (Reflect).")
    p.add_argument("--dataset", required=True, help="dataset folder (written by CoRe² Collect)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    d = TrainSettings()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--size", choices=SIZES, default=d.size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--loss", choices=LOSSES, default=d.loss, help="training objective (see the module docstring)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=d.memory,
                   help="the net also sees the guidance measured on the latest slow step (store_x datasets only)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--plot", help="also write the loss curve to this PNG file")
    p.add_argument("--arch-overrides", type=json.loads, default={}, help=argparse.SUPPRESS)  # JSON, e.g. {"width": 8}
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.suffix != ".safetensors":
        p.error("--out must end in .safetensors")
    world, device = distributed.start(a.device)
    logging.basicConfig(level=logging.INFO if world.main else logging.WARNING,
                        format="%(message)s" if not world.distributed else f"[rank {world.rank}] %(message)s")
    s = TrainSettings(steps=a.steps, batch_size=a.batch_size, lr=a.lr, size=a.size, seed=a.seed,
                      val_fraction=a.val_fraction, device=device, resume=a.resume, overwrite=a.overwrite,
                      checkpoint_every=a.checkpoint_every, eval_every=a.eval_every, loss=a.loss,
                      memory=a.memory, arch_overrides=a.arch_overrides)
    try:
        return _run_cli(a, out, s, world)
    finally:
        distributed.stop(world)


def _run_cli(a, out: Path, s: TrainSettings, world: World) -> int:
    last = [time.time()]

    def progress(step, total, loss):
        if time.time() - last[0] > 10 or step == total:
            last[0] = time.time()
            log.info("step %d/%d  loss %.4f", step, total, loss)

    try:
        res = train(a.dataset, out, s, on_step=progress if world.main else None, world=world)
    except (DatasetError, TrainingError, FileExistsError, ValueError) as e:
        log.error("%s", e)
        return 2
    if not world.main:
        return 0
    log.info("%s", res.summary)
    if a.plot:
        from .loss_plot import draw

        draw(res.history["train"], res.history["val"]).save(a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["TrainSettings", "TrainResult", "train", "evaluate", "relative_loss", "x0_loss", "training_loss", "LOSSES",
           "val_score", "NonFiniteLossError", "partial_path", "kept_files",
           "OutOfMemoryTrainingError", "TrainingError", "optimizer_path", "main", "asdict"]
