"""The dataset's append-only item log: constant cost per item, torn lines survive, format-1 datasets still read."""
import json

import torch

from comfyui_core2.core2 import dataset as ds
from comfyui_core2.core2.weak import PromptFeatures

HEADER = {"family": "sdxl", "prediction": "eps", "latent_channels": 4, "latent_hw": [4, 4], "base_model_hash": "h"}


def _traj(i=0):
    g = torch.Generator().manual_seed(i)
    return {"cond": torch.randn(2, 4, 4, 4, generator=g), "uncond": torch.randn(2, 4, 4, 4, generator=g),
            "sigma": torch.tensor([2.0, 1.0]), "cfg": torch.full((2,), 5.0), "step": torch.arange(2)}


def _feats():
    return PromptFeatures(torch.ones(1, 3, 8), torch.ones(1, 4))


def test_items_are_appended_not_rewritten(tmp_path):
    w = ds.DatasetWriter(tmp_path, HEADER)
    pid = w.add_prompt("a fox", None, _feats(), None)
    size = (tmp_path / ds.MANIFEST).stat().st_size
    h0 = ds.manifest_hash(tmp_path)
    for i in range(30):
        w.add_trajectory(pid, i, 0, _traj(i))
    assert (tmp_path / ds.MANIFEST).stat().st_size == size  # the manifest does not grow with the items
    assert len((tmp_path / ds.ITEMS_LOG).read_bytes().splitlines()) == 30
    assert ds.manifest_hash(tmp_path) != h0
    r = ds.DatasetReader(tmp_path)
    assert [it["seed"] for it in r.items] == list(range(30)) and r.n_samples == 60
    assert torch.equal(r.load_item(r.items[7])["cond"], _traj(7)["cond"].half())
    # reopening sees every item and skips them
    w2 = ds.DatasetWriter(tmp_path, HEADER)
    assert all(w2.has(pid, i) for i in range(30)) and not w2.has(pid, 30)


def test_a_torn_last_line_is_ignored_and_its_shard_redone(tmp_path):
    w = ds.DatasetWriter(tmp_path, HEADER)
    pid = w.add_prompt("a fox", None, _feats(), None)
    w.add_trajectory(pid, 1, 0, _traj(1))
    w.add_trajectory(pid, 2, 0, _traj(2))
    log = tmp_path / ds.ITEMS_LOG
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 25])  # a crash in the middle of writing the second line
    assert [it["seed"] for it in ds.DatasetReader(tmp_path).items] == [1]
    w = ds.DatasetWriter(tmp_path, HEADER)  # the second shard is an orphan now: removed, to be collected again
    assert not (tmp_path / f"traj-{ds.item_key(pid, 2)}.safetensors").exists() and not w.has(pid, 2)
    w.add_trajectory(pid, 2, 0, _traj(2))
    w.add_trajectory(pid, 3, 0, _traj(3))
    assert [it["seed"] for it in ds.DatasetReader(tmp_path).items] == [1, 2, 3]


def test_format_1_manifest_with_listed_items_is_read_and_extended(tmp_path):
    w = ds.DatasetWriter(tmp_path, HEADER)
    pid = w.add_prompt("a fox", None, _feats(), None)
    w.add_trajectory(pid, 1, 0, _traj(1))
    # rewrite it as format 1 wrote it: items listed in manifest.json, no log
    man = ds._read_manifest(tmp_path)
    man["format_version"] = 1
    (tmp_path / ds.MANIFEST).write_text(json.dumps(man))
    (tmp_path / ds.ITEMS_LOG).unlink()
    assert [it["seed"] for it in ds.DatasetReader(tmp_path).items] == [1]
    w = ds.DatasetWriter(tmp_path, HEADER)
    w.add_trajectory(pid, 2, 0, _traj(2))
    w.add_prompt("a cat", None, _feats(), None)  # rewrites the manifest: its own list is kept
    assert [it["seed"] for it in ds.DatasetReader(tmp_path).items] == [1, 2]
    assert [it["seed"] for it in json.loads((tmp_path / ds.MANIFEST).read_text())["items"]] == [1]
