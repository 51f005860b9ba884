"""What to tell the user about a weak model and a Reflect run, in plain words (used by the nodes and by train()).

The verdict reads the HELD-OUT relative error of the predicted guidance ("rel_err" of train.evaluate on prompts the
model never trained on): 1.0 is what cfg 1 (using the conditional prediction as it is) scores, lower is better.
It does not read the training loss's score: with the mixed loss that score also weighs the x0 error, and can look
good while the guidance on new prompts is no better than cfg 1.
"""
from __future__ import annotations

import math
from pathlib import Path

from .dataset import manifest_hash
from .weights_io import read_metadata

BARELY = 0.9  # held-out errors from here to 1.0: a little better than cfg 1, fast steps will still drift


def held_out_error(metrics: dict) -> float | None:
    """The relative error on held-out prompts, None when the validation did not use held-out prompts."""
    err = metrics.get("rel_err")
    if err is None or not str(metrics.get("validation_on", "")).startswith("held-out") or not math.isfinite(err):
        return None
    return float(err)


def no_better_than_cfg1(metrics: dict) -> bool:
    err = held_out_error(metrics)
    return err is not None and err >= 1.0


def verdict(metrics: dict) -> str:
    """One line: is this weak model worth using? From the held-out error (see the module docstring)."""
    err = held_out_error(metrics)
    if err is None:
        seen = metrics.get("rel_err")
        where = f" (error on its own training prompts {seen:.2f})" if seen is not None else ""
        return (f"not checked on held-out prompts{where}: set val_fraction above 0 and collect 4 or more prompts "
                "to know whether it helps")
    if err >= 1.0:
        return f"no better than cfg 1 (held-out error {err:.3g}): collect more seeds and prompts, then train again"
    if err >= BARELY:
        return f"barely better than cfg 1 (held-out error {err:.3g}): collect more seeds and prompts for a useful model"
    return f"useful: held-out error {err:.3g} (cfg 1 = 1.00)"


def _trained_state(path: Path) -> tuple[int, str | None, int | None] | None:
    """(step, dataset manifest hash, dataset items) a weak-model file was trained to, None if unreadable."""
    try:
        meta = read_metadata(path)
    except Exception:  # noqa: BLE001 - a damaged file is train()'s to report
        return None
    tr, dset = meta.get("training") or {}, meta.get("dataset") or {}
    if not isinstance(tr, dict) or not isinstance(dset, dict):
        return None
    return int(tr.get("step", 0) or 0), dset.get("manifest_hash"), dset.get("items")


def resume_would_skip_new_data(files: list, dataset_dir, steps: int) -> str | None:
    """With resume on: a message when the checkpoint(s) `files` (the finished model and its .partial file) are already
    trained to `steps` while the dataset has changed since, so resuming would train nothing on the new data."""
    states = [st for st in (_trained_state(Path(p)) for p in files if Path(p).is_file()) if st is not None]
    if not states:
        return None
    step, trained_hash, items = max(states, key=lambda st: st[0])
    if step < steps or trained_hash is None or trained_hash == manifest_hash(dataset_dir):
        return None
    then = f" (it had {items} trajectories then)" if items is not None else ""
    return (f"the weak model is already trained to step {step} and steps is {steps}, so resume would train nothing, "
            f"but dataset '{Path(dataset_dir).name}' has changed since{then}. Raise steps (e.g. to {step + max(steps, 100)}) "
            "to train on the new data, or turn resume off and use a new save_name to start again.")
