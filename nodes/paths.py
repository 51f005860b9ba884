"""ComfyUI folders, with small fallbacks where ComfyUI's top-level modules are absent (the notcomfy package).

* datasets: <output>/core2_datasets/<name>/
* weak models: models/core2/ (registered as the ComfyUI model folder "core2", .safetensors and .pth only)
Fallback roots (no folder_paths): $CORE2_HOME, else the current directory, with output/, input/, models/ below.
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import folder_paths  # ComfyUI's own; absent in notcomfy
except ImportError:  # pragma: no cover - depends on the ComfyUI flavour
    folder_paths = None

FOLDER = "core2"
EXTENSIONS = {".safetensors", ".pth"}


def _fallback_root() -> Path:
    return Path(os.environ.get("CORE2_HOME", os.getcwd())).resolve()


def output_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return _fallback_root() / "output"


def input_dir() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    return _fallback_root() / "input"


def datasets_dir() -> Path:
    d = output_dir() / "core2_datasets"
    d.mkdir(parents=True, exist_ok=True)
    return d


def register_model_folder() -> None:
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = [default] + list(paths)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def weak_model_dirs() -> list[Path]:
    if folder_paths is not None:
        register_model_folder()
        return [Path(p) for p in folder_paths.get_folder_paths(FOLDER)]
    return [_fallback_root() / "models" / FOLDER]


def weak_model_save_dir() -> Path:
    d = weak_model_dirs()[0]
    d.mkdir(parents=True, exist_ok=True)
    return d


def list_weak_models() -> list[str]:
    if folder_paths is not None:
        register_model_folder()
        return sorted(folder_paths.get_filename_list(FOLDER))
    out = []
    for d in weak_model_dirs():
        if d.is_dir():
            out += [str(p.relative_to(d)) for p in d.rglob("*") if p.suffix in EXTENSIONS]
    return sorted(out)


def weak_model_path(name: str) -> Path:
    """Full path of a listed weak-model file; refuses names outside the core2 model folders."""
    if folder_paths is not None:
        register_model_folder()
        p = folder_paths.get_full_path(FOLDER, name)
        if p is None:
            raise FileNotFoundError(f"CoRe²: no weak model named {name!r} in models/{FOLDER}.")
        return Path(p)
    for d in weak_model_dirs():
        p = (d / name).resolve()
        if p.is_relative_to(d.resolve()) and p.is_file() and p.suffix in EXTENSIONS:
            return p
    raise FileNotFoundError(f"CoRe²: no weak model named {name!r} in {', '.join(map(str, weak_model_dirs()))}.")


register_model_folder()
