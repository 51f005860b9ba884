"""Issue 14: the dataset reader opens only plain files inside the dataset, damaged items are skipped (and collected
again), and several processes can write one dataset."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from comfyui_core2.core2 import dataset as ds
from comfyui_core2.core2 import files
from comfyui_core2.core2.weak import PromptFeatures

ROOT = Path(__file__).resolve().parent.parent
HEADER = {"family": "sdxl", "prediction": "eps", "latent_channels": 4, "latent_hw": [4, 4], "base_model_hash": "h"}


def _traj(i=0, n=2):
    g = torch.Generator().manual_seed(i)
    return {"cond": torch.randn(n, 4, 4, 4, generator=g), "uncond": torch.randn(n, 4, 4, 4, generator=g),
            "sigma": torch.linspace(2.0, 0.5, n), "cfg": torch.full((n,), 5.0), "step": torch.arange(n)}


def _feats(seed=0):
    g = torch.Generator().manual_seed(seed)
    return PromptFeatures(torch.randn(1, 3, 8, generator=g), torch.randn(1, 4, generator=g))


def _dataset(folder, n_prompts=4, seeds=(1, 2)):
    w = ds.DatasetWriter(folder, HEADER)
    pids = [w.add_prompt(f"prompt {p}", None, _feats(p), None) for p in range(n_prompts)]
    for p, pid in enumerate(pids):
        for s in seeds:
            w.add_trajectory(pid, s, 0, _traj(10 * p + s))
    return w, pids


def _log_line(folder, entry):
    ds._append_line(Path(folder) / ds.ITEMS_LOG, entry)


def _in_thread(fn, timeout=20):
    """Run fn in a thread; fail (instead of hanging the test run) when it blocks."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked opening a file"
    if "error" in out:
        raise out["error"]
    return out["value"]


# --- 1. only plain files inside the dataset -------------------------------------------------------------------------
def test_reader_never_opens_files_outside_the_dataset_or_special_files(tmp_path):
    folder = tmp_path / "ds"
    w, pids = _dataset(folder)
    outside = tmp_path / "secret.safetensors"  # a valid shard, outside the dataset
    from safetensors.torch import save_file

    save_file({k: (v.half() if k in ("cond", "uncond") else v) for k, v in _traj(99).items()}, str(outside))
    os.symlink(outside, folder / "traj-link.safetensors")
    os.mkfifo(folder / "traj-fifo.safetensors")
    hostile = {"absolute": str(outside), "dotdot": "../secret.safetensors", "link": "traj-link.safetensors",
               "fifo": "traj-fifo.safetensors", "device": "/dev/zero", "notstr": 5}
    for i, (name, shard) in enumerate(hostile.items()):
        _log_line(folder, {"key": f"evil-{name}", "prompt_id": pids[0], "seed": 100 + i, "batch_index": 0,
                           "shard": shard, "n": 2, "x": False})
    r = _in_thread(lambda: ds.DatasetReader(folder))
    assert len(r.items) == 8 and not any(it["key"].startswith("evil") for it in r.items)
    assert len(r.skipped) == len(hostile)
    for name in hostile:
        assert any(f"evil-{name}" in s for s in r.skipped)
    assert any("not a plain file" in s and "traj-fifo" in s for s in r.skipped)
    assert any("symbolic link" in s for s in r.skipped)
    # the named error, raised by the one function that opens dataset files
    for shard in ("../secret.safetensors", str(outside), "traj-link.safetensors", "traj-fifo.safetensors"):
        with pytest.raises(ds.DatasetFileError):
            _in_thread(lambda s=shard: ds._open_file(folder, s, "shard"))
    with pytest.raises(files.UnsafeFileError, match="not a plain file"):
        _in_thread(lambda: files.open_regular(folder, "traj-fifo.safetensors"))


def test_a_prompt_file_outside_the_dataset_is_refused(tmp_path):
    folder = tmp_path / "ds"
    _dataset(folder, n_prompts=2)
    man = json.loads((folder / ds.MANIFEST).read_text())
    pid = sorted(man["prompts"])[0]
    (tmp_path / "other.safetensors").write_bytes((folder / man["prompts"][pid]["file"]).read_bytes())
    man["prompts"][pid]["file"] = "../other.safetensors"
    (folder / ds.MANIFEST).write_text(json.dumps(man))
    r = ds.DatasetReader(folder)
    assert {it["prompt_id"] for it in r.items} == set(man["prompts"]) - {pid}
    assert len(r.skipped) == 2 and all("../other.safetensors" in s for s in r.skipped)


def test_a_fifo_manifest_or_log_does_not_block(tmp_path):
    folder = tmp_path / "ds"
    _dataset(folder, n_prompts=1)
    (folder / ds.ITEMS_LOG).unlink()
    os.mkfifo(folder / ds.ITEMS_LOG)
    with pytest.raises(ds.DatasetFileError, match="not a plain file"):
        _in_thread(lambda: ds.DatasetReader(folder))
    bad = tmp_path / "bad"
    bad.mkdir()
    os.mkfifo(bad / ds.MANIFEST)
    with pytest.raises(ds.DatasetFileError, match="not a plain file"):
        _in_thread(lambda: ds.DatasetReader(bad))


def test_plain_names_with_double_dots_are_fine_but_paths_are_not(tmp_path):
    assert files.safe_child(tmp_path, "x..y.txt") == tmp_path.resolve() / "x..y.txt"
    for bad in ("..", ".", "../x", "a/b", "/etc/passwd", ".hidden", "a\\b", "", "x" * 200):
        with pytest.raises(ValueError):
            files.safe_child(tmp_path, bad)


# --- 4. damaged items -------------------------------------------------------------------------------------------------
def _damage(folder, w, pids):
    """Damage five items in five ways; returns {key: how}."""
    keys = [ds.item_key(pids[p], s) for p in range(4) for s in (1, 2)]
    shard = {k: folder / f"traj-{k}.safetensors" for k in keys}
    data = shard[keys[0]].read_bytes()
    shard[keys[0]].write_bytes(data[: len(data) // 2])  # truncated
    shard[keys[1]].write_bytes(b"")  # zero bytes
    shard[keys[2]].unlink()  # missing
    from safetensors.torch import save_file

    t = _traj(5, n=2)
    t["cond"] = torch.randn(2, 4, 8, 8)  # wrong latent shape
    save_file({k: (v.half() if k in ("cond", "uncond") else v) for k, v in t.items()}, str(shard[keys[3]]))
    _log_line(folder, {"key": "no-prompt", "shard": shard[keys[4]].name, "n": 2})  # a bad log line (no prompt_id)
    _log_line(folder, {"key": "bad-seed", "prompt_id": pids[2], "seed": "x", "shard": shard[keys[4]].name, "n": 2})
    with open(folder / ds.ITEMS_LOG, "ab") as f:
        f.write(b"{not json\n")
    return {keys[0]: "truncated", keys[1]: "zero", keys[2]: "missing", keys[3]: "shape"}


def test_damaged_items_are_skipped_with_a_warning_naming_each_file(tmp_path, caplog):
    folder = tmp_path / "ds"
    w, pids = _dataset(folder)
    damaged = _damage(folder, w, pids)
    with caplog.at_level("WARNING"):
        r = ds.DatasetReader(folder)
    assert len(r.items) == 4 and not set(damaged) & {it["key"] for it in r.items}
    for key in damaged:
        assert any(f"traj-{key}.safetensors" in s for s in r.skipped), (key, r.skipped)
        assert f"traj-{key}.safetensors" in caplog.text
    assert any("no-prompt" in s for s in r.skipped) and any("line" in s and ds.ITEMS_LOG in s for s in r.skipped)
    assert any("bad-seed" in s for s in r.skipped)
    assert any("shape" in s for s in r.skipped)
    b = r.collate([(r.items[i], row) for i, row in r.rows(r.items)])  # the rest reads fine
    assert b["cond"].shape[0] == r.n_samples == 8 and torch.isfinite(b["cond"]).all()


def test_training_goes_on_without_damaged_items_and_says_how_many(tmp_path):
    from comfyui_core2.core2.train import TrainSettings, train

    folder = tmp_path / "ds"
    w, pids = _dataset(folder)
    _damage(folder, w, pids)
    s = TrainSettings(steps=3, batch_size=4, lr=1e-3, size="small", val_fraction=0.25, eval_every=3,
                      arch_overrides=dict(width=8, mults=[1, 2], blocks=1, emb_dim=16))
    res = train(folder, tmp_path / "w.safetensors", s)
    assert res.step == 3 and "skipped 7 damaged dataset entries" in res.summary
    assert res.metadata["dataset"]["items"] == 4 and res.metadata["dataset"]["skipped"] == 7


def test_collect_resume_collects_damaged_items_again(tmp_path):
    folder = tmp_path / "ds"
    w, pids = _dataset(folder)
    damaged = _damage(folder, w, pids)
    assert ds.intact_keys(folder) == {it["key"] for it in ds.DatasetReader(folder).items}
    w2 = ds.DatasetWriter(folder, HEADER)
    for p, pid in enumerate(pids):
        for s in (1, 2):
            key = ds.item_key(pid, s)
            assert w2.has(pid, s) == (key not in damaged)
            if not w2.has(pid, s):
                w2.add_trajectory(pid, s, 0, _traj(10 * p + s))
    r = ds.DatasetReader(folder)
    assert len(r.items) == 8 and not any(key in s for key in damaged for s in r.skipped)
    assert len(r.skipped) == 3  # only the three bad log lines remain noted
    assert torch.equal(r.load_item(next(it for it in r.items if it["key"] == list(damaged)[0]))["cond"],
                       _traj(1)["cond"].half())


def test_a_prompt_file_of_the_wrong_shape_is_skipped(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "ds"
    w, pids = _dataset(folder, n_prompts=2)
    save_file({"pos_tokens": torch.zeros(3, 8, 2)}, str(folder / f"prompt-{pids[0]}.safetensors"))
    save_file({"pos_tokens": torch.zeros(5, 8, dtype=torch.float16)}, str(folder / f"prompt-{pids[1]}.safetensors"))
    with pytest.raises(ds.DatasetError, match="no usable trajectories") as e:
        ds.DatasetReader(folder)
    assert "does not hold token features" in str(e.value) and "does not match its entry" in str(e.value)


def test_a_damaged_manifest_header_is_a_clear_error(tmp_path):
    folder = tmp_path / "ds"
    _dataset(folder, n_prompts=1)
    man = json.loads((folder / ds.MANIFEST).read_text())
    man["header"]["latent_hw"] = "64x64"
    (folder / ds.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ds.DatasetError, match="damaged .bad header latent_channels/latent_hw"):
        ds.DatasetReader(folder)


def test_a_damaged_prompt_file_is_written_again(tmp_path):
    folder = tmp_path / "ds"
    w, pids = _dataset(folder, n_prompts=2)
    (folder / f"prompt-{pids[0]}.safetensors").write_bytes(b"\0" * 10)
    assert len(ds.DatasetReader(folder).items) == 2
    w2 = ds.DatasetWriter(folder, HEADER)
    assert not w2.has(pids[0], 1)
    assert w2.add_prompt("prompt 0", None, _feats(0), None) == pids[0]
    assert len(ds.DatasetReader(folder).items) == 4


# --- 5. several writers -----------------------------------------------------------------------------------------------
WRITER = r"""
import sys, time, torch
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from core2 import dataset as ds
from core2.weak import PromptFeatures
folder, wid, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
header = {"family": "sdxl", "prediction": "eps", "latent_channels": 4, "latent_hw": [4, 4], "base_model_hash": "h"}
while not (folder.parent / "go").exists():
    time.sleep(0.01)
for i in range(n):
    w = ds.DatasetWriter(folder, header)  # a new writer per item, as Collect's sink does
    w.note_run({"writer": wid, "i": i % 3})
    text = "shared" if i % 4 == 0 else f"w{wid}-{i % 5}"
    pid = w.add_prompt(text, None, PromptFeatures(torch.ones(1, 3, 8), torch.ones(1, 4)), None)
    t = {"cond": torch.randn(2, 4, 4, 4), "uncond": torch.randn(2, 4, 4, 4), "sigma": torch.tensor([2.0, 1.0]),
         "cfg": torch.full((2,), 5.0), "step": torch.arange(2)}
    w.add_trajectory(pid, 1000 * int(wid) + i, 0, t, extra={"run": w.manifest["runs"].index({"writer": wid, "i": i % 3})})
print("ok")
"""


def test_two_processes_write_one_dataset_without_losing_anything(tmp_path):
    folder, n = tmp_path / "ds", 25
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(wid), str(n), str(ROOT)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for wid in (1, 2)]
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "ok" in out, err[-3000:]
    r = ds.DatasetReader(folder)
    assert len(r.items) == 2 * n and not r.skipped
    assert {it["prompt_id"] for it in r.items} <= set(r.manifest["prompts"])
    assert len(r.manifest["prompts"]) == 11  # "shared" and 5 per writer
    runs = r.manifest["runs"]
    assert len(runs) == 6
    for it in r.items:  # every item's run index points at its own writer's settings
        assert runs[it["run"]]["writer"] == str(it["seed"] // 1000)
    assert not list(folder.glob(".*.tmp"))
    assert len(list(folder.glob("traj-*.safetensors"))) == 2 * n


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        keep = tmp_path / f".traj-a.safetensors.{live.pid}.x1y2.tmp"
        mine = tmp_path / f".traj-b.safetensors.{os.getpid()}.x1y2.tmp"
        gone = tmp_path / f".traj-c.safetensors.{dead.pid}.x1y2.tmp"
        fresh_unowned = tmp_path / ".manifest.json.abcd.tmp"
        for p in (keep, mine, gone, fresh_unowned):
            p.write_bytes(b"partial")
        assert files.clean_stale_temps(tmp_path) == 1
        assert keep.exists() and mine.exists() and fresh_unowned.exists() and not gone.exists()
        ds.DatasetWriter(tmp_path, HEADER)
        assert keep.exists() and mine.exists()
    finally:
        live.kill()
        live.wait()


def test_dataset_files_are_readable_like_comfyui_outputs(tmp_path):
    folder = tmp_path / "ds"
    _dataset(folder, n_prompts=1, seeds=(1,))
    umask = os.umask(0)
    os.umask(umask)
    want = 0o666 & ~umask
    for p in folder.iterdir():
        if not p.name.startswith("."):
            assert p.stat().st_mode & 0o777 == want, p.name


# --- 3. weak-model files ----------------------------------------------------------------------------------------------
def _small_model():
    from comfyui_core2.core2.arch import build, make_config

    return build(make_config("small", 4, 8, 4, family="sdxl", prediction="eps", width=8, emb_dim=16))


def test_a_weak_model_file_cannot_make_the_loader_allocate_what_its_tensors_do_not_hold(tmp_path, monkeypatch):
    from safetensors import safe_open

    from comfyui_core2.core2 import arch, weights_io

    model = _small_model()
    good = tmp_path / "good.safetensors"
    weights_io.save_weak_model(good, model, {})
    meta = weights_io.read_metadata(good)
    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def forged(name, **config):
        p = tmp_path / name
        m = {**meta, "config": {**meta["config"], **config}}
        files.atomic_save_safetensors(p, tensors, {k: (v if k == "format" else json.dumps(v)) for k, v in m.items()})
        return p

    built = []
    monkeypatch.setattr(arch.ConvFiLMWeakModel, "__init__",
                        lambda self, *a, _real=arch.ConvFiLMWeakModel.__init__, **k: (built.append(str(torch.empty(0).device)), _real(self, *a, **k))[1])
    cases = {"huge.safetensors": dict(width=20000), "wide.safetensors": dict(width=1024, mults=[1, 8]),
             "neg.safetensors": dict(blocks=-1), "str.safetensors": dict(emb_dim="16"),
             "mults.safetensors": dict(mults=[1] * 40), "other.safetensors": dict(width=16),
             "memstr.safetensors": dict(memory="yes"), "memnox.safetensors": dict(memory=True),
             "memshape.safetensors": dict(memory=True, x_input=True)}
    for name, cfg in cases.items():
        built.clear()
        with pytest.raises(weights_io.WeakModelFileError, match=name.split(".")[0]) as e:
            weights_io.load_weak_model(forged(name, **cfg))
        assert "config" in str(e.value)
        assert built in ([], ["meta"]), (name, built)  # at most a skeleton on the meta device, never real weights
    weights_io.load_weak_model(good)


def test_every_bad_weak_model_file_gives_one_error_type(tmp_path):
    from comfyui_core2.core2 import weights_io

    model = _small_model()
    good = tmp_path / "good.safetensors"
    weights_io.save_weak_model(good, model, {})
    data = good.read_bytes()
    bad = {"truncated.safetensors": data[: len(data) // 2], "empty.safetensors": b"", "zeros.safetensors": b"\0" * 64,
           "text.pth": b"not a torch file"}
    for name, blob in bad.items():
        (tmp_path / name).write_bytes(blob)
    meta = weights_io.read_metadata(good)
    no_cfg = {**meta, "config": "oops"}
    files.atomic_save_safetensors(tmp_path / "nocfg.safetensors", dict(model.state_dict()),
                                  {k: (v if k == "format" else json.dumps(v)) for k, v in no_cfg.items()})
    legacy = tmp_path / "legacy.pth"  # a pre-1.6 torch file: read (not memory-mapped), then "not a weak model"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    for name in [*bad, "nocfg.safetensors", "legacy.pth"]:
        with pytest.raises(weights_io.WeakModelFileError) as e:
            weights_io.load_weak_model(tmp_path / name)
        assert name in str(e.value) and "mmap" not in str(e.value), str(e.value)
    with pytest.raises(weights_io.WeakModelFileError, match="not a weak model this pack knows"):
        weights_io.load_weak_model(legacy)
    assert issubclass(weights_io.WeakModelFileError, ValueError)


# --- 6. smaller items -------------------------------------------------------------------------------------------------
def test_dataset_dropdown_lists_only_names_the_nodes_accept(comfy_folders):
    from comfyui_core2.nodes import paths, reflect

    root = paths.datasets_dir()
    for name in ("ok set", "x..y", "bad(name)", "ünïcode"):
        (root / name).mkdir()
        (root / name / ds.MANIFEST).write_text("{}")
    listed = reflect.list_datasets()
    assert "ok set" in listed and "x..y" in listed and "bad(name)" not in listed and "ünïcode" not in listed
    for name in listed:
        files.safe_child(root, name, "dataset name")  # every listed entry is accepted


def test_atomic_write_via_a_file_name_replaces_whole_or_not_at_all(tmp_path):
    """files.atomic_write_via (writers that take a file name): the target is the new file, readable like ComfyUI's
    outputs, or, when the writer fails, the old file untouched and no temporary file left."""
    from comfyui_core2.core2 import files

    target = tmp_path / "w.bin"
    target.write_bytes(b"old")

    def failing(name):
        Path(name).write_bytes(b"half")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        files.atomic_write_via(target, failing)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]
    files.atomic_write_via(target, lambda name: Path(name).write_bytes(b"new"))
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]
    assert target.stat().st_mode & 0o777 == files.FILE_MODE


# --- 7. big datasets: files checked as they are read (issue 20) ----------------------------------------------------
def test_a_big_dataset_opens_without_reading_its_shards_and_skips_damaged_ones_when_read(tmp_path, monkeypatch, caplog):
    from bench.open_large import build

    folder = tmp_path / "big"
    build(folder, 2000)  # > ds.EAGER_CHECK_MAX items
    keys = [json.loads(line)["key"] for line in (folder / ds.ITEMS_LOG).read_text().splitlines()]
    damaged = {keys[5]: "zero", keys[7]: "truncated", keys[9]: "missing"}
    (folder / f"traj-{keys[5]}.safetensors").write_bytes(b"")
    data = (folder / f"traj-{keys[7]}.safetensors").read_bytes()
    (folder / f"traj-{keys[7]}.safetensors").write_bytes(data[: len(data) // 2])
    (folder / f"traj-{keys[9]}.safetensors").unlink()
    _log_line(folder, {"key": "no-prompt", "shard": f"traj-{keys[0]}.safetensors", "n": 2})
    opened = []
    real = ds._open_file
    monkeypatch.setattr(ds, "_open_file", lambda f, name, what: (opened.append(name), real(f, name, what))[1])
    r = ds.DatasetReader(folder)
    assert not r.checked_at_open and len(r.items) == 2000 and opened == []  # not one file opened
    assert len(r.skipped) == 1 and "no-prompt" in r.skipped[0]  # a bad log entry is still found at open
    train, val = r.split(0.1)
    assert len(train) + len(val) == 2000 and opened == []
    with caplog.at_level("WARNING"):
        b = r.collate([(it, 1) for it in r.items[:12]], [0] * 12)
    assert b["cond"].shape[0] == b["mem_delta"].shape[0] == 9 and torch.isfinite(b["cond"]).all()
    for key in damaged:  # skipped with the same warning, naming the file
        assert f"traj-{key}.safetensors" in caplog.text and any(f"traj-{key}.safetensors" in s for s in r.skipped)
    assert len(r.skipped) == 4 and len(set(opened)) <= 12 + 3  # only the shards (and the prompts) read
    assert r.collate([(r.items[5], 0)]) is None and len(r.skipped) == 4  # found once, left out from then on
    with pytest.raises(ds.DatasetFileError, match=f"traj-{keys[9]}"):
        r.load_item(r.items[9])
    assert ds.DatasetReader(folder, check_all=True).skipped.__len__() == 4  # the old way finds the same at open


def test_training_on_a_big_dataset_leaves_out_damaged_items_found_while_training(tmp_path):
    from bench.open_large import build

    from comfyui_core2.core2.train import TrainSettings, train

    folder = tmp_path / "big"
    build(folder, 1200)
    for line in (folder / ds.ITEMS_LOG).read_text().splitlines()[::100]:
        (folder / json.loads(line)["shard"]).write_bytes(b"")
    s = TrainSettings(steps=30, batch_size=64, lr=1e-3, size="small", val_fraction=0.1, eval_every=30,
                      arch_overrides=dict(width=8, mults=[1, 2], blocks=1, emb_dim=16))
    res = train(folder, tmp_path / "w.safetensors", s)
    assert res.step == 30 and "more damaged dataset entries while training" in res.summary
    assert res.metadata["dataset"]["items"] == 1200 and 0 < res.metadata["dataset"]["skipped"] <= 12
