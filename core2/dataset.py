"""The CoRe² trajectory dataset: what Collect writes and Reflect reads.

Layout of a dataset folder (ComfyUI/output/core2_datasets/<name>/):

  manifest.json                      the header (family, model identity, sampler settings, shapes, pack version)
                                     and the prompts (format 1 also listed the items here)
  items.jsonl                        the complete items, one JSON line each, appended as trajectories land
  prompt-<pid>.safetensors           per prompt: pos_tokens [T,D], pos_pooled [P], neg_tokens [T',D], neg_pooled [P]
                                     (the negative entries are absent when sampling had no negative)
  traj-<key>.safetensors             per trajectory (one prompt, seed and batch row): cond, uncond [S,C,H,W] raw model
                                     outputs (ε or v) in fp16; sigma, cfg [S] fp32; step [S] int64; optional x [S,C,H,W]

Every file is written atomically (temporary file, fsync, rename) and a trajectory enters the item log only after
its shard is complete, so a crash or a cancel never leaves the dataset inconsistent: a rerun finds exactly the
items that are done and redoes the rest. The log is appended (and fsynced) one line per item, so collecting costs
the same per item at ten thousand items as at ten; a line torn by a crash is ignored and its shard redone.

Several writers (ComfyUI instances or processes sharing the folder) are safe: renames into place, log lines and
manifest updates happen under an inter-process lock (files.folder_lock), the manifest is merged with what is on
disk (prompts and runs are only ever added), and a writer removes only temporary files whose process is gone.

Files named in manifest.json or items.jsonl are untrusted: the reader opens only plain files directly inside the
folder (files.open_regular: no '..', no absolute path, no symlink, no FIFO or device, never a blocking open). An
item whose files are missing, damaged or of the wrong shape is skipped with a warning naming the file; Collect
verifies the listed items when it resumes and collects the damaged ones again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import stat
from collections import OrderedDict
from pathlib import Path

import torch

from . import __version__
from .files import (UnsafeFileError, atomic_write_json, clean_stale_temps, fd_path, folder_lock, open_regular,
                    read_regular, safetensors_bytes, write_temp)
from .weak import PromptFeatures

log = logging.getLogger(__name__)

FORMAT = "core2-dataset"
FORMAT_VERSION = 2  # 2: items in items.jsonl (format-1 manifests with an "items" list are still read)
MANIFEST = "manifest.json"
ITEMS_LOG = "items.jsonl"
# header fields that must agree for every item of one dataset
MUST_MATCH = ("family", "prediction", "latent_channels", "latent_hw", "base_model_hash")
BIG = ("cond", "uncond", "x")


def prompt_id(positive_text: str, negative_text: str | None) -> str:
    return hashlib.sha256(f"{positive_text}\x00{negative_text or ''}".encode()).hexdigest()[:16]


def item_key(pid: str, seed: int, batch_index: int = 0) -> str:
    return f"{pid}-{int(seed)}-{int(batch_index)}"


def _check_pid(pid) -> str:
    """A prompt id as prompt_id() makes them (16 hex digits): names of files are built from it, so a manifest from
    elsewhere cannot name a path."""
    if not (isinstance(pid, str) and len(pid) == 16 and all(c in "0123456789abcdef" for c in pid)):
        raise DatasetError(f"CoRe²: {pid!r} is not a CoRe² prompt id (16 hex digits); the dataset's manifest is damaged "
                           "or was not written by CoRe² Collect.")
    return pid


def trajectory_seed(seed: int, pid: str, j: int) -> int:
    """The noise seed of the j-th trajectory of a prompt: seed + a per-prompt offset (from the prompt id) + j.

    Every (prompt, j) pair gets its own noise. A weak model learns the guidance from many different noises; with
    the same few seeds for every prompt it learns those noises instead, and fails on new seeds. The offset comes
    from the prompt text, so adding or reordering prompts keeps the seeds (and resume) of the others."""
    return (int(seed) + int(pid[:12], 16) + int(j)) % 2**64


def shard_of(pid: str, j0: int, count: int) -> int:
    """Which of `count` shards collects the sampling call of prompt `pid` starting at trajectory j0: a hash, the same
    on every machine, so N servers given shards 0..N−1 together collect exactly what one server would (each pair
    still gets trajectory_seed's seed, hence the same trajectory)."""
    if count <= 1:
        return 0
    return int(hashlib.sha256(f"{pid}|{int(j0)}".encode()).hexdigest()[:12], 16) % int(count)


def check_shard(index: int, count: int) -> None:
    if int(count) < 1 or not 0 <= int(index) < int(count):
        raise ValueError(f"CoRe² Collect Batch: shard_index {index} of shard_count {count} does not exist: use "
                         f"shard_count = the number of servers (≥ 1) and shard_index 0 … shard_count − 1, one per server.")


def _feature_bytes(f: PromptFeatures | None) -> bytes:
    if f is None:
        return b"none"
    parts = [f.tokens] + ([f.pooled] if f.pooled is not None else [])
    h = hashlib.sha256()
    for t in parts:
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.digest()


def conditioning_pid(pos: PromptFeatures, neg: PromptFeatures | None) -> str:
    """A prompt id from the conditioning tensors (used where the prompt text is unknown)."""
    return hashlib.sha256(b"cond" + _feature_bytes(pos) + _feature_bytes(neg)).hexdigest()[:16]


def header_mismatches(stored: dict, header: dict, only_given: bool = False) -> list[str]:
    """The MUST_MATCH keys on which a dataset's stored header and a run's header differ (only_given: only the keys
    the run's header has, for checks made before the latent size is known)."""
    keys = [k for k in MUST_MATCH if k in header] if only_given else MUST_MATCH
    return [f"{k}: dataset has {stored.get(k)!r}, this run has {header.get(k)!r}" for k in keys
            if stored.get(k) != header.get(k)]


def refuse_mismatch(diffs: list[str]) -> None:
    """Raise the one error for adding another model's or size's items to a dataset."""
    if diffs:
        raise DatasetError("CoRe²: refusing to mix different models or latent shapes in one dataset ("
                           + "; ".join(diffs) + "). Use a new dataset name for this model or size.")


def cfg_values(cfg: torch.Tensor) -> list[float]:
    """The distinct CFG scales of a trajectory's cfg column, rounded to 4 places (the item log keeps them, so that a
    trainer learns a dataset's scales without opening every shard)."""
    return sorted({round(float(v), 4) for v in cfg.reshape(-1).tolist()})


def bytes_per_trajectory(steps: int, latent_channels: int, h: int, w: int, store_x: bool) -> int:
    """fp16 bytes of one trajectory (cond + uncond [+ x]), for disk estimates."""
    per = latent_channels * h * w * 2
    return steps * per * (3 if store_x else 2) + steps * 16 + 4096


class DatasetError(ValueError):
    pass


class DatasetFileError(DatasetError):
    """A file of the dataset (or named by it) that is refused: outside the folder, not a plain file, damaged, or of
    the wrong shape. The message names the file."""


def _open_file(folder: Path, name, what: str):
    """A safetensors handle on a plain file directly inside folder (see files.open_regular)."""
    from safetensors import safe_open

    try:
        fd = open_regular(folder, name, what)
    except UnsafeFileError as e:
        raise DatasetFileError(str(e)) from e
    except FileNotFoundError as e:
        raise DatasetFileError(f"CoRe²: {what} {name!r} is missing from {folder}.") from e
    try:
        return safe_open(fd_path(fd, folder / name), framework="pt")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise DatasetFileError(f"CoRe²: {what} {name!r} in {folder} is damaged ({e}).") from e
    finally:
        os.close(fd)


def _read_manifest_file(folder: Path) -> dict:
    try:
        raw = read_regular(folder, MANIFEST, "manifest")
    except FileNotFoundError:
        raise DatasetError(f"CoRe²: {folder} is not a CoRe² dataset (no {MANIFEST}). Collect one with the CoRe² Collect nodes.") from None
    except UnsafeFileError as e:
        raise DatasetFileError(str(e)) from e
    try:
        man = json.loads(raw)
    except ValueError as e:
        raise DatasetError(f"CoRe²: {folder / MANIFEST} is not valid JSON ({e}).") from e
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        fmt = man.get("format") if isinstance(man, dict) else None
        raise DatasetError(f"CoRe²: {folder} holds a '{fmt}' manifest, not a CoRe² dataset.")
    if int(man.get("format_version", 0)) > FORMAT_VERSION:
        raise DatasetError(f"CoRe²: {folder} was written by a newer comfyui-core2 (format {man['format_version']}); update the pack.")
    man.setdefault("items", [])
    man.setdefault("prompts", {})
    man.setdefault("runs", [])
    types = {"header": dict, "items": list, "prompts": dict, "runs": list}
    bad = [k for k, t in types.items() if not isinstance(man.get(k), t)]
    hdr = man.get("header") if isinstance(man.get("header"), dict) else {}
    hw = hdr.get("latent_hw")
    if type(hdr.get("latent_channels")) is not int or not isinstance(hw, list) or len(hw) != 2 \
            or not all(type(v) is int and v > 0 for v in hw) or hdr["latent_channels"] < 1:
        bad.append("header latent_channels/latent_hw")
    if bad:
        raise DatasetError(f"CoRe²: {folder / MANIFEST} is damaged (bad {', '.join(bad)}). Collect into a new dataset.")
    return man


def _read_items_log(folder: Path, problems: list | None = None) -> list[dict]:
    """The appended items; a line that does not parse (torn by a crash) is skipped (and noted in problems)."""
    try:
        raw = read_regular(folder, ITEMS_LOG, "item log")
    except FileNotFoundError:
        return []
    except UnsafeFileError as e:
        raise DatasetFileError(str(e)) from e
    items = []
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            it = json.loads(line)
        except ValueError:
            it = None
        if isinstance(it, dict) and isinstance(it.get("key"), str) and "shard" in it:
            items.append(it)
        elif line.strip() and problems is not None:
            problems.append(f"{ITEMS_LOG} line {n}: not a complete item")
    return items


def _with_log(man: dict, folder: Path) -> dict:
    """A copy of manifest.json's dict whose "items" = its own list (format 1) then the item log, the last entry per
    key (an item collected again after damage is listed again), in the order keys first appeared."""
    last: dict = {}
    for it in man["items"] + _read_items_log(folder):
        if isinstance(it, dict) and isinstance(it.get("key"), str):
            last[it["key"]] = it
    return {**man, "items": list(last.values())}


def _read_manifest(folder: Path) -> dict:
    """The manifest with every listed item (manifest.json's own list and the item log), unchecked."""
    return _with_log(_read_manifest_file(folder), folder)


def _check_prompt(folder: Path, man: dict, pid, cache: dict) -> None:
    """Raise DatasetFileError unless prompt pid is listed and its features file is a readable safetensors file."""
    if pid not in cache:
        entry = man["prompts"].get(pid) if isinstance(pid, str) else None
        try:
            if not isinstance(entry, dict):
                raise DatasetFileError(f"CoRe²: prompt {pid!r} is not in {MANIFEST}")
            with _open_file(folder, entry.get("file"), "prompt file") as h:
                shapes = {k: list(h.get_slice(k).get_shape()) for k in h.keys()}
            _check_prompt_shapes(entry, shapes)
            cache[pid] = None
        except DatasetFileError as e:
            cache[pid] = str(e)
    if cache[pid]:
        raise DatasetFileError(cache[pid])


def _check_prompt_shapes(entry: dict, shapes: dict) -> None:
    """tokens [T, D] (the negative as wide as the positive), pooled [P], and what the manifest says about them."""
    name, pos = entry.get("file"), shapes.get("pos_tokens")
    ok = pos is not None and len(pos) == 2 and min(pos) > 0
    ok = ok and all(len(shapes[k]) == 2 and shapes[k][1] == pos[1] for k in ("neg_tokens",) if k in shapes)
    ok = ok and all(len(shapes[k]) == 1 for k in ("pos_pooled", "neg_pooled") if k in shapes)
    if not ok:
        raise DatasetFileError(f"CoRe²: prompt file {name!r} does not hold token features [T, D] (it has {shapes})")
    if not isinstance(entry.get("shapes"), dict) or entry["shapes"].get("pos_tokens") != pos:
        raise DatasetFileError(f"CoRe²: prompt file {name!r} does not match its entry in {MANIFEST}")


def check_entry(man: dict, item) -> None:
    """Raise DatasetFileError unless the item's log entry is well formed and names a listed prompt. Opens no file."""
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("key", "shard", "prompt_id")) \
            or type(item.get("n")) is not int or item["n"] < 1 \
            or not all(type(item.get(k, 0)) is int for k in ("seed", "batch_index")):
        raise DatasetFileError(f"CoRe²: item {str(item)[:120]} lacks key, shard, prompt_id or n, or has a bad seed")
    if not isinstance(man["prompts"].get(item["prompt_id"]), dict):
        raise DatasetFileError(f"CoRe²: prompt {item['prompt_id']!r} is not in {MANIFEST}")


def check_item(folder: Path, man: dict, item, prompt_cache: dict | None = None) -> None:
    """Raise DatasetFileError (naming the file) unless the item's shard and prompt are present, intact, and of the
    dataset's shapes. Reads only the safetensors headers."""
    check_entry(man, item)
    _check_prompt(folder, man, item["prompt_id"], {} if prompt_cache is None else prompt_cache)
    hdr, name, n = man["header"], item["shard"], item["n"]
    big = [n, int(hdr["latent_channels"]), *map(int, hdr["latent_hw"])]
    with _open_file(folder, name, "shard") as h:
        keys = set(h.keys())
        missing = {"cond", "uncond", "sigma", "cfg", "step"} - keys
        if missing:
            raise DatasetFileError(f"CoRe²: shard {name!r} lacks {sorted(missing)}")
        for k in sorted(keys & {"cond", "uncond", "x", "sigma", "cfg", "step"}):
            want = big if k in BIG else [n]
            got = list(h.get_slice(k).get_shape())
            if got != want:
                raise DatasetFileError(f"CoRe²: shard {name!r}: {k} has shape {got}, the dataset needs {want}")


def scan_items(folder: Path, man: dict, check_files: bool = True) -> tuple[list[dict], list[str]]:
    """(intact items, one problem line per damaged item or log line). Items: manifest.json's own list (format 1)
    then the log; per key the last entry that checks out (a damaged item collected again is repaired).
    check_files=False checks the entries only (check_entry: no file is opened; DatasetReader checks the files of
    a big dataset item by item as it reads them)."""
    problems: list[str] = []
    good: dict[str, dict] = {}
    bad: dict[str, str] = {}
    cache: dict = {}
    for it in man["items"] + _read_items_log(folder, problems):
        try:
            check_item(folder, man, it, cache) if check_files else check_entry(man, it)
        except DatasetFileError as e:
            bad[str(it.get("key") if isinstance(it, dict) else it)] = str(e)
            continue
        good[it["key"]] = it
    problems += [f"item {k}: {msg}" for k, msg in bad.items() if k not in good]
    return list(good.values()), problems


def intact_keys(folder: str | Path) -> set[str]:
    """Keys of the items whose files are present and intact (empty when there is no dataset yet)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return set()
    items, problems = scan_items(folder, _read_manifest_file(folder))
    for p in problems:
        log.warning("CoRe² dataset %s: %s; it will be collected again.", folder.name, p)
    return {it["key"] for it in items}


def _append_line(path: Path, record: dict) -> None:
    """Append one JSON line durably; a torn previous line (crash mid-write) is closed off first. Call under the
    folder lock. Refuses a log that is a link or not a plain file."""
    line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags, 0o666)
    with os.fdopen(fd, "rb+") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DatasetFileError(f"CoRe²: {path} is not a plain file; refusing to append to it.")
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def manifest_hash(folder: str | Path) -> str:
    """Changes whenever the dataset changes (manifest or item log)."""
    folder = Path(folder)
    h = hashlib.sha256(read_regular(folder, MANIFEST, "manifest"))
    try:
        h.update(read_regular(folder, ITEMS_LOG, "item log"))
    except FileNotFoundError:
        pass
    return h.hexdigest()[:16]


def _merge(on_disk: dict, ours: dict) -> dict:
    """on_disk with our prompts and runs added: nothing another writer added is lost, run indices never move."""
    prompts = {**ours["prompts"], **on_disk["prompts"]}
    runs = list(on_disk["runs"]) + [r for r in ours["runs"] if r not in on_disk["runs"]]
    return {**on_disk, "prompts": prompts, "runs": runs}


class DatasetWriter:
    """Appends trajectories to a dataset folder; refuses items from another model or latent shape. Safe with other
    writers on the same folder, in this process or others (see the module docstring)."""

    def __init__(self, folder: str | Path, header: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        missing = [k for k in MUST_MATCH if k not in header]
        if missing:
            raise ValueError(f"dataset header lacks {missing}")
        with folder_lock(self.folder):
            clean_stale_temps(self.folder)
            if (self.folder / MANIFEST).exists():
                self.manifest = _with_log(_read_manifest_file(self.folder), self.folder)
                self._check_same(header)
            else:
                self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "pack_version": __version__,
                                 "header": dict(header), "runs": [], "prompts": {}, "items": []}
                atomic_write_json(self.folder / MANIFEST, self.manifest)
            self._drop_orphans()
        self._entry = {it["key"]: it for it in self.manifest["items"]}  # the last entry per key
        self._keys = set(self._entry)
        self._intact_cache: dict[str, bool] = {}
        self._prompt_cache: dict = {}

    def _check_same(self, header: dict) -> None:
        refuse_mismatch(header_mismatches(self.manifest["header"], header))

    @staticmethod
    def stored_header(folder: str | Path) -> dict | None:
        """The header of the dataset in folder, None when there is no dataset there yet."""
        folder = Path(folder)
        return _read_manifest_file(folder)["header"] if (folder / MANIFEST).is_file() else None

    @classmethod
    def check_compatible(cls, folder: str | Path, header: dict) -> None:
        """Refuse early (before sampling) when the dataset in folder holds another model or latent shape; compares
        the MUST_MATCH keys that header has (a Collect node learns the latent size only when sampling starts)."""
        stored = cls.stored_header(folder)
        if stored is not None:
            refuse_mismatch(header_mismatches(stored, header, only_given=True))

    def _drop_orphans(self) -> None:
        """Under the folder lock: a shard whose log line never landed belongs to a writer that died between the
        rename and the log append (both happen under the lock), so it is removed and its item redone."""
        known = {it.get("shard") for it in self.manifest["items"]}
        for p in self.folder.glob("traj-*.safetensors"):
            if p.name not in known:
                p.unlink(missing_ok=True)

    def _update_manifest(self, change) -> None:
        """Under the lock: re-read manifest.json, apply change(manifest) to it, merge in ours, write it back."""
        with folder_lock(self.folder):
            disk = _read_manifest_file(self.folder)
            change(self.manifest)
            merged = _merge(disk, self.manifest)
            atomic_write_json(self.folder / MANIFEST, merged)  # a format-1 dataset keeps its version and its own list
            self.manifest.update(prompts=merged["prompts"], runs=merged["runs"])

    @property
    def header(self) -> dict:
        return self.manifest["header"]

    def _intact(self, key: str) -> bool:
        """Whether a listed item's files are intact (checked once per writer); a damaged one is collected again."""
        if key not in self._intact_cache:
            try:
                check_item(self.folder, self.manifest, self._entry[key], self._prompt_cache)
                self._intact_cache[key] = True
            except DatasetFileError as e:
                log.warning("CoRe² dataset %s: item %s is damaged (%s); collecting it again.", self.folder.name, key, e)
                self._intact_cache[key] = False
        return self._intact_cache[key]

    def has(self, pid: str, seed: int, batch_index: int = 0) -> bool:
        key = item_key(pid, seed, batch_index)
        return key in self._keys and self._intact(key)

    def note_run(self, settings: dict) -> None:
        """Record the sampler settings of a collecting run (sampler, scheduler, steps, σ schedule, cfg)."""
        self._update_manifest(lambda m: m["runs"].append(settings) if settings not in m["runs"] else None)

    def add_prompt(self, positive_text: str, negative_text: str | None, pos: PromptFeatures, neg: PromptFeatures | None,
                   pid: str | None = None) -> str:
        """Store a prompt's features once (again when its file is damaged). pid: an explicit prompt id (e.g. a hash
        of the conditioning tensors when the prompt text is unknown); by default the id is derived from the texts."""
        pid = pid or prompt_id(positive_text, negative_text)
        if pid in self.manifest["prompts"]:
            try:
                _check_prompt(self.folder, self.manifest, pid, {})
                return pid
            except DatasetFileError as e:
                log.warning("CoRe² dataset %s: %s; writing it again.", self.folder.name, e)
        t = {"pos_tokens": pos.tokens[0].to(torch.float16).cpu()}
        if pos.pooled is not None:
            t["pos_pooled"] = pos.pooled[0].to(torch.float16).cpu()
        if neg is not None:
            t["neg_tokens"] = neg.tokens[0].to(torch.float16).cpu()
            if neg.pooled is not None:
                t["neg_pooled"] = neg.pooled[0].to(torch.float16).cpu()
        fname = f"prompt-{pid}.safetensors"
        entry = {"positive": positive_text, "negative": negative_text, "file": fname,
                 "shapes": {k: list(v.shape) for k, v in t.items()}}
        self._put(fname, safetensors_bytes(t), lambda: self._update_manifest(lambda m: m["prompts"].update({pid: entry})))
        self._prompt_cache.pop(pid, None)
        return pid

    def _put(self, name: str, data: bytes, then=None) -> None:
        """Write a file of the dataset: the slow write outside the lock, the rename (and then()) under it."""
        tmp = write_temp(self.folder / name, data)
        try:
            with folder_lock(self.folder):
                os.replace(tmp, self.folder / name)
                if then is not None:
                    then()
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def add_trajectory(self, pid: str, seed: int, batch_index: int, tensors: dict, extra: dict | None = None) -> str:
        """tensors: cond, uncond [S,C,H,W] (raw outputs), sigma [S], cfg [S], step [S], optional x [S,C,H,W]."""
        if pid not in self.manifest["prompts"]:
            raise KeyError(f"unknown prompt id {pid}; call add_prompt first")
        key = item_key(pid, seed, batch_index)
        if key in self._keys and self._intact(key):
            return key
        c, h, w = tensors["cond"].shape[1:]
        hdr = self.header
        if c != hdr["latent_channels"] or [h, w] != list(hdr["latent_hw"]):
            raise DatasetError(f"CoRe²: latent {c}x{h}x{w} does not match the dataset's {hdr['latent_channels']}x"
                               f"{hdr['latent_hw'][0]}x{hdr['latent_hw'][1]}; use a new dataset for another size.")
        out = {}
        for k, v in tensors.items():
            v = v.detach().cpu()
            if k in BIG:
                out[k] = v.to(torch.float16)
            elif k == "step":
                out[k] = v.to(torch.int64)
            else:
                out[k] = v.to(torch.float32)
        shard = f"traj-{key}.safetensors"
        entry = {"key": key, "prompt_id": pid, "seed": int(seed), "batch_index": int(batch_index), "shard": shard,
                 "n": int(out["cond"].shape[0]), "x": "x" in out, "cfgs": cfg_values(out["cfg"]), **(extra or {})}
        self._put(shard, safetensors_bytes(out), lambda: _append_line(self.folder / ITEMS_LOG, entry))
        self.manifest["items"].append(entry)
        self._entry[key] = entry
        self._keys.add(key)
        self._intact_cache[key] = True
        return key


    # --- copying from another dataset (core2/dataset_merge.py) ----------------------------------------------
    def copy_prompt(self, pid: str, entry: dict, data: bytes) -> bool:
        """Add a prompt file of another dataset (checked by its reader) unless this one has it; True when added."""
        _check_pid(pid)
        if pid in self.manifest["prompts"]:
            return False
        entry = {**entry, "file": f"prompt-{pid}.safetensors"}
        self._put(entry["file"], data, lambda: self._update_manifest(lambda m: m["prompts"].update({pid: entry})))
        return True

    def copy_trajectory(self, entry: dict, data: bytes) -> bool:
        """Add a trajectory file of another dataset (checked by its reader) unless an intact copy of its key is
        here already; True when added."""
        key = item_key(_check_pid(entry["prompt_id"]), entry["seed"], entry["batch_index"])
        if entry["prompt_id"] not in self.manifest["prompts"]:
            raise DatasetError(f"CoRe²: trajectory {key} names prompt {entry['prompt_id']}, which was not copied first")
        if key in self._keys and self._intact(key):
            return False
        entry = {**entry, "key": key, "shard": f"traj-{key}.safetensors"}
        self._put(entry["shard"], data, lambda: _append_line(self.folder / ITEMS_LOG, entry))
        self.manifest["items"].append(entry)
        self._entry[key] = entry
        self._keys.add(key)
        self._intact_cache[key] = True
        return True


EAGER_CHECK_MAX = 1000  # DatasetReader checks the files of datasets up to this many items at open (≈0.4 ms each)


class DatasetReader:
    """Lazy reader for training: rows are read from memory-mapped safetensors on demand.

    Damaged items are skipped with a warning naming the file (self.skipped lists them). A dataset of up to
    EAGER_CHECK_MAX items has every item's files checked at open, so the list is complete from the start; a bigger
    one (check_all=None) has only its log entries checked at open (no file is opened, so 100,000 items open in
    seconds) and each item's files when the item is first read: a damaged one found then is skipped from then on
    (collate leaves its rows out), with the same warning. check_all=True/False forces one way."""

    def __init__(self, folder: str | Path, max_open: int = 64, check_all: bool | None = None):
        self.folder = Path(folder)
        man = _read_manifest_file(self.folder)
        listed = bool(man["items"]) or (self.folder / ITEMS_LOG).exists()
        items, self.skipped = scan_items(self.folder, man, check_files=False)  # one line per damaged item
        self.checked_at_open = len(items) <= EAGER_CHECK_MAX if check_all is None else bool(check_all)
        if self.checked_at_open:
            items, self.skipped = scan_items(self.folder, man)
        for p in self.skipped:
            log.warning("CoRe² dataset %s, skipped: %s", self.folder.name, p)
        self._verdict: dict[str, str | None] = {it["key"]: None for it in items} if self.checked_at_open else {}
        self._check_cache: dict = {}
        self.manifest = {**man, "items": items}
        self.header = self.manifest["header"]
        self.items = list(items)
        if not self.items and listed and self.skipped:
            raise DatasetError(f"CoRe²: dataset {self.folder.name} has no usable trajectories: every listed item is "
                               f"damaged ({'; '.join(self.skipped[:3])}). Run the same CoRe² Collect again: it "
                               "collects damaged items again.")
        if not self.items:
            raise DatasetError(f"CoRe²: dataset {self.folder.name} has no trajectories yet. Collect some first.")
        self._open: OrderedDict = OrderedDict()
        self._max_open = max_open
        self._prompt_cache: dict = {}

    # --- structure -------------------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return sum(it["n"] for it in self.items)

    def prompt_ids(self) -> list[str]:
        return sorted({it["prompt_id"] for it in self.items})

    def split(self, val_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
        """Train/validation split, deterministic for a seed: no prompt and no shared noise seed in both.

        Validation holds a `val_fraction` of the prompts. When noise seeds are shared between prompts (Collect Batch
        uses the same seeds for every prompt), it also holds a `val_fraction` of those seeds: validation items have a
        held-out prompt AND a held-out seed, training items neither (the cross items are left out). Otherwise a
        model could score well on validation by remembering the collected noise, and fail on new seeds. With one
        shared seed only, validation cannot avoid it (see seed_overlap())."""
        pids = self.prompt_ids()
        random.Random(seed).shuffle(pids)
        n_val = int(round(len(pids) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(pids) > 1:
            n_val = 1
        if n_val >= len(pids) and val_fraction > 0:
            raise DatasetError(f"CoRe²: {len(pids)} prompt(s) cannot be split with validation fraction {val_fraction}; "
                               "collect more prompts or lower the fraction.")
        val_p = set(pids[:n_val])
        prompts_of: dict[int, set] = {}
        for it in self.items:
            prompts_of.setdefault(int(it.get("seed", 0)), set()).add(it["prompt_id"])
        shared = sorted(s for s, ps in prompts_of.items() if len(ps) > 1)
        val_s: set = set()
        if n_val and len(shared) > 1:
            random.Random(seed + 1).shuffle(shared)
            k = min(len(shared) - 1, max(1, int(round(len(shared) * val_fraction))))
            val_s = set(shared[:k])
        if not val_s:
            return ([it for it in self.items if it["prompt_id"] not in val_p],
                    [it for it in self.items if it["prompt_id"] in val_p])
        train, val = [], []
        for it in self.items:
            sd = int(it.get("seed", 0))
            p_in, s_in = it["prompt_id"] in val_p, sd in val_s
            if p_in and (s_in or len(prompts_of[sd]) == 1):
                val.append(it)
            elif not p_in and not s_in:
                train.append(it)
        return train, val

    @staticmethod
    def seed_overlap(train: list[dict], val: list[dict]) -> bool:
        """True when some validation item shares its noise seed with a training item."""
        seeds = {int(it.get("seed", 0)) for it in train}
        return any(int(it.get("seed", 0)) in seeds for it in val)

    def item_has_x(self, item: dict) -> bool:
        """Whether the item stores the noisy latents x_t (older manifests do not say: then the shard is asked)."""
        return item["x"] if "x" in item else "x" in self._handle(item["shard"]).keys()

    def has_x(self, items: list[dict]) -> bool:
        """Whether every item stores x_t (collected with store_x)."""
        return bool(items) and all(self.item_has_x(it) for it in items)

    # --- reading ---------------------------------------------------------------------------------------------
    def usable(self, item: dict) -> bool:
        """Whether the item's files are intact (checked once, when first asked: a damaged one is added to skipped
        and warned about)."""
        key = item["key"]
        if key not in self._verdict:
            try:
                check_item(self.folder, self.manifest, item, self._check_cache)
                self._verdict[key] = None
            except DatasetFileError as e:
                self._verdict[key] = f"item {key}: {e}"
                self.skipped.append(self._verdict[key])
                log.warning("CoRe² dataset %s, skipped: %s", self.folder.name, self._verdict[key])
        return self._verdict[key] is None

    def _usable_or_raise(self, item: dict) -> None:
        if not self.usable(item):
            raise DatasetFileError(f"CoRe²: dataset {self.folder.name}: {self._verdict[item['key']]}")

    def _handle(self, shard: str):
        h = self._open.get(shard)
        if h is None:
            h = _open_file(self.folder, shard, "shard")
            self._open[shard] = h
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(shard)
        return h

    def load_item(self, item: dict) -> dict:
        self._usable_or_raise(item)
        h = self._handle(item["shard"])
        return {k: h.get_tensor(k) for k in h.keys()}

    def prompt_features(self, pid: str) -> tuple[PromptFeatures, PromptFeatures | None]:
        if pid not in self._prompt_cache:
            with _open_file(self.folder, self.manifest["prompts"][pid]["file"], "prompt file") as h:
                t = {k: h.get_tensor(k) for k in h.keys()}
            pos = PromptFeatures(t["pos_tokens"][None].float(), t["pos_pooled"][None].float() if "pos_pooled" in t else None)
            neg = None
            if "neg_tokens" in t:
                neg = PromptFeatures(t["neg_tokens"][None].float(), t["neg_pooled"][None].float() if "neg_pooled" in t else None)
            self._prompt_cache[pid] = (pos, neg)
        return self._prompt_cache[pid]

    def rows(self, items: list[dict]) -> list[tuple[int, int]]:
        return [(i, r) for i, it in enumerate(items) for r in range(it["n"])]

    def cfgs(self, item: dict) -> list[float]:
        """The item's distinct CFG scales: from its log entry when it lists them, else read from its shard
        (DatasetFileError when damaged)."""
        listed = item.get("cfgs")
        if isinstance(listed, list) and listed and all(type(v) in (int, float) for v in listed):
            return [float(v) for v in listed]
        return cfg_values(self.tensor(item, "cfg"))

    def tensor(self, item: dict, key: str) -> torch.Tensor:
        """One stored column of an item's shard (e.g. "cfg" [S]), read in full (DatasetFileError when damaged)."""
        self._usable_or_raise(item)
        return self._handle(item["shard"]).get_tensor(key)

    def collate(self, picks: list, memory_rows: list[int] | None = None) -> dict:
        """A batch from (item, row) picks: cond, uncond, sigma, cfg [B…] (float32; x [B…] only when every picked row
        stores it) and the features of the batch's UNIQUE prompts (pos_/neg_ tokens zero-padded to the longest,
        *_mask marking real tokens, pooled, has_neg [U…]) with prompt_index [B] into them, so a trainer encodes each
        prompt once per batch.

        memory_rows: per pick, an earlier row of the same trajectory to remember as the latest slow step (−1: none):
        adds mem_delta = cond − uncond there [B…], mem_sigma [B] and mem_has [B] (see weak.GuidanceMemory).

        Picks of damaged items (usable() is False) are left out; None when no pick is left."""
        picks, memory_rows = self._usable_picks(picks, memory_rows)
        if not picks:
            return None
        cols: dict[str, list] = {k: [] for k in ("cond", "uncond", "sigma", "cfg", "x")}
        order: dict[str, int] = {}
        index = []
        for it, r in picks:
            h = self._handle(it["shard"])
            has_x = self.item_has_x(it)
            for k in cols:
                if k != "x" or has_x:
                    cols[k].append(h.get_slice(k)[r:r + 1])
            index.append(order.setdefault(it["prompt_id"], len(order)))
        if len(cols["x"]) != len(picks):  # x_t only when every row has it
            cols.pop("x")
        out = {k: torch.cat(v).float() for k, v in cols.items()}
        feats = [self.prompt_features(pid) for pid in order]
        out.update(_stack_features("pos", [p for p, _ in feats]))
        out.update(_stack_features("neg", [n for _, n in feats], like=feats[0][0]))
        out["has_neg"] = torch.tensor([n is not None for _, n in feats])
        out["prompt_index"] = torch.tensor(index)
        if memory_rows is not None:
            out.update(self._memory(picks, memory_rows, out["cond"]))
        return out

    def _usable_picks(self, picks: list, memory_rows: list[int] | None) -> tuple[list, list[int] | None]:
        ok = [self.usable(it) for it, _ in picks]
        if all(ok):
            return picks, memory_rows
        return ([p for p, k in zip(picks, ok) if k],
                None if memory_rows is None else [m for m, k in zip(memory_rows, ok) if k])

    def _memory(self, picks: list, memory_rows: list[int], like: torch.Tensor) -> dict:
        delta, sigma = torch.zeros_like(like), torch.ones(len(picks))
        has = torch.tensor([s >= 0 for s in memory_rows])
        for j, ((it, _), s) in enumerate(zip(picks, memory_rows)):
            if s >= 0:
                h = self._handle(it["shard"])
                delta[j] = h.get_slice("cond")[s:s + 1][0].float() - h.get_slice("uncond")[s:s + 1][0].float()
                sigma[j] = h.get_slice("sigma")[s:s + 1][0].float()
        return {"mem_delta": delta, "mem_sigma": sigma, "mem_has": has}


def _stack_features(prefix: str, feats: list, like: PromptFeatures | None = None) -> dict:
    """Pad and stack; rows without features (no negative) stay zero with an all-False mask."""
    ref = next((f for f in feats if f is not None), like)
    t_max = max([f.tokens.shape[1] for f in feats if f is not None] or [1])
    d = ref.tokens.shape[2]
    toks = torch.zeros(len(feats), t_max, d)
    mask = torch.zeros(len(feats), t_max, dtype=torch.bool)
    pooled = torch.zeros(len(feats), ref.pooled.shape[-1]) if ref.pooled is not None else None
    for i, f in enumerate(feats):
        if f is None:
            continue
        t = f.tokens.shape[1]
        toks[i, :t] = f.tokens[0]
        mask[i, :t] = True
        if pooled is not None and f.pooled is not None:
            pooled[i] = f.pooled[0]
    out = {f"{prefix}_tokens": toks, f"{prefix}_mask": mask}
    if pooled is not None:
        out[f"{prefix}_pooled"] = pooled
    return out


def estimate_dataset_bytes(n_trajectories: int, steps: int, latent_channels: int, h: int, w: int, store_x: bool) -> int:
    return n_trajectories * bytes_per_trajectory(steps, latent_channels, h, w, store_x)


__all__ = ["DatasetWriter", "DatasetReader", "DatasetError", "DatasetFileError", "check_entry", "check_item", "scan_items",
           "intact_keys", "prompt_id", "item_key", "manifest_hash",
           "estimate_dataset_bytes", "FORMAT", "FORMAT_VERSION"]
