"""Safe file handling shared by datasets and weak-model files: confined paths, atomic writes, disk checks."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")


def safe_child(root: str | os.PathLike, name: str, what: str = "name") -> Path:
    """root/name, refusing anything that could leave root: separators, '..', absolute paths, symlinks."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"CoRe²: invalid {what} {name!r}: use letters, digits, '.', '_', '-' and spaces "
                         "(no folders, no '..', at most 128 characters).")
    root = Path(root).resolve()
    path = root / name
    if path.is_symlink():
        raise ValueError(f"CoRe²: {what} {name!r} is a symbolic link; refusing to follow it out of {root}.")
    if not path.resolve().is_relative_to(root):
        raise ValueError(f"CoRe²: {what} {name!r} resolves outside {root}.")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=False).encode())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, blob)


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed_bytes > free:
        raise RuntimeError(f"CoRe²: {what} needs about {needed_bytes / 2**20:.0f} MiB but only {free / 2**20:.0f} MiB "
                           f"are free on the disk holding {folder}. Free some space or collect fewer items.")


def clean_stale_temps(folder: str | os.PathLike) -> int:
    """Remove temporary files left by an interrupted atomic write. Returns how many were removed."""
    n = 0
    for p in Path(folder).glob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
