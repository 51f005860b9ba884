"""The one-command demo end to end in a tiny configuration: Collect → Reflect → grid + report, then a resumed rerun."""
import json

import torch

from demo import pipeline, run as demo_run
from demo.pipeline import DemoConfig


def _tiny_config() -> DemoConfig:
    return DemoConfig(prompts=6, seeds_per_prompt=2, steps=4, train_steps=30, train_batch=8, eval_samples=6,
                      grid_prompts=("a red triangle at the top", "a blue cross in the centre"), grid_scale=2,
                      dataset_name="toy_demo_test", model_name="toy_demo_test_tiny")


def test_demo_end_to_end_and_rerun_reuses(tmp_path, monkeypatch):
    import comfy.utils
    from comfyui_core2.nodes import paths

    monkeypatch.setenv("CORE2_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    pbar = getattr(comfy.utils, "PROGRESS_BAR_ENABLED", None)
    old_out = paths.folder_paths.get_output_directory() if paths.folder_paths is not None else None
    cfg = _tiny_config()
    try:
        report = demo_run.run(tmp_path, cfg, threads=1)
        again = demo_run.run(tmp_path, cfg, threads=1)
    finally:
        torch.set_num_threads(threads)
        if pbar is not None:
            comfy.utils.PROGRESS_BAR_ENABLED = pbar
        if old_out is not None:
            paths.folder_paths.set_output_directory(old_out)

    grid = tmp_path / "core2_demo_grid.png"
    assert grid.is_file() and (tmp_path / "core2_demo_report.md").is_file()
    from PIL import Image

    with Image.open(grid) as im:  # 5 columns and 2 rows of 32×32 pictures at ×2, plus labels
        assert im.width > 5 * 64 and im.height > 2 * 64
        px = im.convert("RGB").load()
        # the first picture's cell is not blank: sampled pixels differ from the white background
        assert len({px[x, y] for x in range(im.width // 2, im.width) for y in range(im.height // 2, im.height, 7)}) > 10

    saved = json.loads((tmp_path / "core2_demo_report.json").read_text())
    assert saved["dataset"]["items"] == 6 * 2 and saved["dataset"]["prompts"] == 6
    # collected at the toy model's own latent size, with x_t (the weak model then takes x_t input)
    from comfyui_core2.core2.dataset import DatasetReader

    reader = DatasetReader(saved["dataset"]["folder"])
    assert reader.header["latent_hw"] == [16, 16] and reader.has_x(reader.items)
    assert len({(it["seed"], it["batch_index"]) for it in reader.items}) == 12  # noise of its own per trajectory
    assert saved["training"]["steps"] == 30 and 0 < saved["training"]["val_rel_err"] < 10
    assert saved["training"]["seconds"] > 0
    names = [m["name"] for m in saved["methods"]]
    assert names == ["cfg 1", "CFG 5", "CoRe² all-fast", "CoRe² mixed", "CoRe² all-slow"]
    passes = {m["name"]: m["passes_per_image"] for m in saved["methods"]}
    n = cfg.steps
    # counted by a UNet wrapper: cfg 1 and all-fast run the conditional pass only, CFG and all-slow both passes
    assert passes == {"cfg 1": n, "CFG 5": 2 * n, "CoRe² all-fast": n, "CoRe² mixed": n + n // 2, "CoRe² all-slow": 2 * n}
    for m in saved["methods"]:
        acc = m["accuracy"]
        assert acc["n"] == 6 and all(0.0 <= acc[k] <= 1.0 for k in ("shape", "colour", "position", "mean"))
        assert m["seconds"] > 0
    assert saved["wall_seconds"] > 0 and report["grid"]["path"] == str(grid.resolve())

    # the rerun collected nothing and trained nothing, and reports the same model
    assert again["dataset"]["collected_now"] == 0 and again["dataset"]["reused"] == 12
    assert again["training"]["trained_now"] is False
    assert again["training"]["val_rel_err"] == saved["training"]["val_rel_err"]
    assert saved["training"]["loss"] == "mixed" and saved["training"]["val_rel_err_x0"] > 0

    # a model file from before the loss setting (trained on "relative") is trained afresh, not resumed or reused
    from comfyui_core2.core2.weights_io import load_weak_model, read_metadata, save_weak_model

    path = pipeline.weak_model_path(tmp_path, cfg)
    meta = read_metadata(path)
    meta["training"].pop("loss")
    save_weak_model(path, load_weak_model(path), meta)
    _, info = pipeline.train(tmp_path, cfg, saved["dataset"]["folder"])
    assert info["trained_now"] and info["loss"] == "mixed" and read_metadata(path)["training"]["loss"] == "mixed"


def test_pass_counter_counts_rows_per_image(tmp_path, monkeypatch):
    from comfyui_core2.toy import world

    model = world.load_toy_model()
    m = pipeline.Method("CFG", "cfg", 5.0, 3)
    images, passes, _ = pipeline.sample(model, m, None, ["a red circle at the top", "a green square on the left"], 7)
    assert images.shape == (2, 32, 32, 3) and passes == 6
