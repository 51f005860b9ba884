"""Safe file handling shared by datasets and weak-model files: confined paths, atomic writes, disk checks, locks."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the in-process lock only
    fcntl = None

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")
LOCK_FILE = ".core2.lock"


class UnsafeFileError(ValueError):
    """A file name that could leave its folder, or a file that is not a plain file (FIFO, device, symlink)."""


def valid_name(name) -> bool:
    """A plain file or folder name: letters, digits, '.', '_', '-', spaces; no separators; not '.' or '..'."""
    return isinstance(name, str) and bool(_NAME.match(name))


def safe_child(root: str | os.PathLike, name: str, what: str = "name") -> Path:
    """root/name, refusing anything that could leave root: separators, '..', absolute paths, symlinks."""
    if not valid_name(name):  # the pattern admits no separator and no leading '.', so never '.' or '..'
        raise UnsafeFileError(f"CoRe²: invalid {what} {name!r}: use letters, digits, '.', '_', '-' and spaces "
                              "(no folders, no leading '.', at most 128 characters).")
    root = Path(root).resolve()
    path = root / name
    if path.is_symlink():
        raise UnsafeFileError(f"CoRe²: {what} {name!r} is a symbolic link; refusing to follow it out of {root}.")
    if not path.resolve().is_relative_to(root):
        raise UnsafeFileError(f"CoRe²: {what} {name!r} resolves outside {root}.")
    return path


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(root: str | os.PathLike, name: str, what: str = "file") -> int:
    """A read-only descriptor of root/name, only when that is a plain file inside root (checked by name, by lstat
    before opening and by fstat after). Opened non-blocking and without following links, so a FIFO or device
    swapped in cannot block or be read. Raises UnsafeFileError (or FileNotFoundError when absent)."""
    path = safe_child(root, name, what)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"CoRe²: {what} {name!r} in {Path(root)} is not a plain file; refusing to open it.")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFileError(f"CoRe²: {what} {name!r} became a symbolic link; refusing to follow it.") from e
        raise
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode) or (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise UnsafeFileError(f"CoRe²: {what} {name!r} in {Path(root)} changed while it was opened; refusing it.")
    return fd


def read_regular(root: str | os.PathLike, name: str, what: str = "file") -> bytes:
    """The bytes of root/name, opened as open_regular() does."""
    with os.fdopen(open_regular(root, name, what), "rb") as f:
        return f.read()


def fd_path(fd: int, fallback: str | os.PathLike) -> str:
    """A path that reopens exactly the file behind fd (Linux /proc), for libraries that take a path; else fallback."""
    p = f"/proc/self/fd/{fd}"
    return p if os.path.exists(p) else str(fallback)


def _read_umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


FILE_MODE = 0o666 & ~_read_umask()  # what a plain open() would give (0644 under the usual umask), as ComfyUI's outputs


def write_temp(path: str | os.PathLike, data: bytes) -> str:
    """Write data, fsynced, to a temporary file next to path (named after this process, see clean_stale_temps);
    returns its name. The caller renames it into place (os.replace) or removes it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    tmp = write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_via(path: str | os.PathLike, write) -> None:
    """atomic_write_bytes for writers that take a file name and stream to it (safetensors' save_file, torch.save) so
    that a large file is never held in memory twice: write(tmp) fills a temporary file next to path, which is then
    fsynced and renamed over path; on any failure the temporary file is removed and path left as it was."""
    tmp = write_temp(path, b"")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=False).encode())


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed_bytes > free:
        raise RuntimeError(f"CoRe²: {what} needs about {needed_bytes / 2**20:.0f} MiB but only {free / 2**20:.0f} MiB "
                           f"are free on the disk holding {folder}. Free some space or collect fewer items.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


_TEMP_OWNER = re.compile(r"\.(\d+)\.[^.]+\.tmp$")
STALE_UNOWNED_S = 24 * 3600  # temporaries without an owner pid (older pack versions) are removed after a day


def clean_stale_temps(folder: str | os.PathLike) -> int:
    """Remove temporary files left by an interrupted atomic write: only those whose writing process is gone (the
    pid is in the name), so other writers' files in flight are never touched. Returns how many were removed."""
    n = 0
    for p in Path(folder).glob(".*.tmp"):
        m = _TEMP_OWNER.search(p.name)
        if m:
            if int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
                continue
        else:
            with contextlib.suppress(OSError):
                if time.time() - p.lstat().st_mtime < STALE_UNOWNED_S:
                    continue
        p.unlink(missing_ok=True)
        n += 1
    return n


_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()  # per thread: folder -> nesting depth (the flock is taken once, at depth 0)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike):
    """Exclusive lock on a folder across threads and processes (flock on <folder>/.core2.lock where the system has
    it); re-entrant within a thread. Held only for short updates (renames, log lines, manifest merges)."""
    key = str(Path(folder).resolve())
    with _THREAD_LOCKS_GUARD:
        tl = _THREAD_LOCKS.setdefault(key, threading.RLock())
    held = _HELD.__dict__.setdefault("depth", {})
    with tl:
        if held.get(key) or fcntl is None:
            held[key] = held.get(key, 0) + 1
            try:
                yield
            finally:
                held[key] -= 1
            return
        fd = os.open(Path(key) / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        held[key] = 1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            held[key] = 0
            os.close(fd)  # closing releases the flock
