"""Weak-model files: our safetensors format, and a loader registry that other formats plug into.

Our format: a .safetensors file whose metadata has format = "core2-weak-model"; every other metadata value is
JSON (config, dataset hash, base-model identity, cfg, validation metrics, training state, loss history).

load_weak_model(path) tries, in order: our format (by metadata), the loaders registered with register_loader(),
and the official CoRe² weights through core2/official (is_official_state_dict(keys) / load_official(...)) when that
module exists. Only safetensors and torch.load(weights_only=True) are used to read files.
"""
from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .calibration import GuidanceGain
from .files import atomic_save_safetensors
from .weak import WeakModel

log = logging.getLogger(__name__)

FORMAT = "core2-weak-model"
FORMAT_VERSION = 1


class WeakModelFileError(ValueError):
    pass


# --- our format ---------------------------------------------------------------------------------------------------
def save_weak_model(path, model: WeakModel, metadata: dict | None = None) -> None:
    """Atomically write `model` (its state dict in its own dtype) with JSON metadata; the old file survives a failure."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "pack_version": __version__,
            "arch": model.config["arch"], "config": model.config, "family": model.family,
            "latent_channels": model.latent_channels, "prediction": model.prediction, **(metadata or {})}
    meta["format"] = FORMAT
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_save_safetensors(path, tensors, metadata={k: (v if k == "format" else json.dumps(v)) for k, v in meta.items()})


def read_metadata(path) -> dict:
    """The decoded metadata of a .safetensors file ({} when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v) if k != "format" else v
        except (TypeError, json.JSONDecodeError):
            out[k] = v
    return out


def _check_shapes(path: Path, config) -> None:
    """Refuse a file whose config is out of bounds or does not describe exactly its tensors, before allocating."""
    from safetensors import safe_open

    from .arch import parameter_shapes

    try:
        want = parameter_shapes(config)
    except ValueError as e:
        raise WeakModelFileError(f"CoRe²: {path.name} has an invalid architecture config: {e}.") from e
    with safe_open(str(path), framework="pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    bad = [f"{k}: file {got.get(k)}, config {want.get(k)}" for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if bad:
        raise WeakModelFileError(f"CoRe²: {path.name} does not match its own architecture config ({len(bad)} tensors "
                                 f"differ, e.g. {'; '.join(bad[:3])}); the file is damaged or was edited.")


def _load_ours(path: Path, meta: dict) -> WeakModel:
    from safetensors.torch import load_file

    from .arch import build

    if str(meta.get("format_version", 0)).isdigit() and int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise WeakModelFileError(f"CoRe²: {path.name} was written by a newer comfyui-core2 (format "
                                 f"{meta['format_version']}); update the pack.")
    _check_shapes(path, meta.get("config"))
    model = build(meta["config"])
    sd = load_file(str(path))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeakModelFileError(f"CoRe²: {path.name} does not match its own architecture (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}); the file is damaged.")
    cfgs = meta.get("cfg") or []
    model.trained_cfg = float(cfgs[0]) if len(cfgs) == 1 else None
    try:
        model.guidance_gain = GuidanceGain.from_meta(meta.get("guidance_gain"))
    except ValueError as e:
        raise WeakModelFileError(f"CoRe²: {path.name} has an invalid guidance calibration ({e}); the file is damaged "
                                 "or was edited.") from e
    return model


# --- registry -----------------------------------------------------------------------------------------------------
Detector = Callable[[Path, list, dict], bool]  # (path, state-dict keys, metadata) -> is it yours?
Loader = Callable[[Path, dict | None, dict], WeakModel]  # (path, state dict or None, metadata) -> model

_LOADERS: list[tuple[str, Detector, Loader]] = []


def register_loader(name: str, detect: Detector, load: Loader) -> None:
    """Add a file format. Detectors run in registration order after our own format."""
    _LOADERS[:] = [entry for entry in _LOADERS if entry[0] != name]
    _LOADERS.append((name, detect, load))


def _official_module():
    """core2/official if it exists (the official CoRe² weights loader), else None. Errors inside it propagate."""
    name = f"{__package__}.official"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name in (name, f"{__package__}.official"):
            return None
        raise


def _read_any(path: Path) -> tuple[list, dict, dict | None]:
    """(keys, metadata, state dict or None). safetensors are only opened lazily; .pth goes through weights_only."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        return keys, read_metadata(path), None
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # a pre-1.6 (not zip) file cannot be memory-mapped: read it whole
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal means "not loadable safely"
        raise WeakModelFileError(f"CoRe²: {path.name} cannot be read as plain tensors ({e}). Only weights-only "
                                 ".pth files and .safetensors are accepted.") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeakModelFileError(f"CoRe²: {path.name} does not hold a state dict.")
    return list(obj.keys()), {}, obj


def load_weak_model(path) -> WeakModel:
    """Load any known weak-model file. Every bad file (damaged, unknown, out-of-bounds config, tensors that do not
    match) raises WeakModelFileError (a ValueError) naming the file; a missing one FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoRe²: weak-model file {path} does not exist.")
    try:
        return _load_any(path)
    except (WeakModelFileError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - safetensors, torch and format loaders raise many types for bad files
        if isinstance(e, ValueError) and str(e).startswith("CoRe²"):  # already a clear message (e.g. official weights)
            raise WeakModelFileError(str(e)) from e
        raise WeakModelFileError(f"CoRe²: {path.name} is not a valid weak-model file ({type(e).__name__}: {e}).") from e


def _load_any(path: Path) -> WeakModel:
    keys, meta, sd = _read_any(path)
    if meta.get("format") == FORMAT:
        model = _load_ours(path, meta)
    else:
        model = None
        for name, detect, load in _LOADERS:
            if detect(path, keys, meta):
                model = load(path, sd, meta)
                break
        if model is None:
            official = _official_module()
            if official is not None and official.is_official_state_dict(keys):
                model = official.load_official(sd if sd is not None else str(path))
        if model is None:
            hint = ", ".join(keys[:4]) + (" …" if len(keys) > 4 else "")
            raise WeakModelFileError(f"CoRe²: {path.name} is not a weak model this pack knows (metadata format "
                                     f"{meta.get('format')!r}; keys {hint}). Train one with CoRe² Reflect, or use the "
                                     "official CoRe² weights.")
    model.metadata = meta
    if getattr(model, "name", None) in (None, "", WeakModel.name) or meta.get("format") == FORMAT:
        model.name = path.stem
    model.eval()
    model.requires_grad_(False)
    return model


__all__ = ["save_weak_model", "read_metadata", "load_weak_model", "register_loader", "WeakModelFileError", "FORMAT",
           "FORMAT_VERSION"]
