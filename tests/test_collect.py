"""CoRe² Collect: exact recording, bit-identical images, resumable batches, refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8


@pytest.fixture
def dirs(comfy_folders):
    return comfy_folders


def _conds(tm):
    """Two positives (distinct) and the negative of a tiny model, as CONDITIONING keyed by text."""
    p2 = [[tm.positive[0][0] * -0.7 + 0.1, dict(tm.positive[0][1])]]
    return {"a red fox": tm.positive, "a blue car": p2, "ugly": tm.negative}


def _capture(model):
    """A clone of model whose (earlier) post-CFG function logs what the sampler itself computed."""
    log = []

    def cap(args):
        log.append({k: args[k].detach().clone() for k in ("input", "cond_denoised", "uncond_denoised", "denoised")}
                   | {"sigma": args["sigma"].detach().clone()})
        return args["denoised"]

    m = model.clone()
    m.set_model_sampler_post_cfg_function(cap)
    return m, log


def _batch(collect, model, conds, name, prompts=("a red fox", "a blue car"), cfg=5.0, size=128, seeds_per_prompt=2, **kw):
    from comfyui_core2.nodes import collect_batch

    return collect_batch.collect_batch(model, list(prompts), "ugly", conds.__getitem__, seeds_per_prompt=seeds_per_prompt, seed=10, steps=STEPS,
                                 cfg=cfg, sampler_name="euler", scheduler="normal", width=size, height=size,
                                 dataset_name=name, store_x=kw.pop("store_x", True), **kw)


def test_batch_records_exactly_and_images_are_identical(tiny_sd15, dirs):
    import comfy.sample
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.core2.guidance import raw_from_denoised
    from comfyui_core2.nodes import collect, collect_batch

    tm = tiny_sd15
    conds = _conds(tm)
    model, log = _capture(tm.patcher)
    res = _batch(collect, model, conds, "exact")
    assert len(res.written) == 4 and not res.skipped and len(log) == 4 * STEPS

    reader = ds.DatasetReader(res.folder)
    assert len(reader.items) == 4 and reader.n_samples == 4 * STEPS
    hdr = reader.header
    assert hdr["family"] == "sd15" and hdr["latent_hw"] == [16, 16] and hdr["steps"] == STEPS and hdr["cfg"] == 5.0
    assert hdr["sampler"] == "euler" and hdr["scheduler"] == "normal" and len(hdr["sigmas"]) == STEPS + 1
    order = [(p, collect_batch.ds.trajectory_seed(10, ds.prompt_id(p, "ugly"), j)) for p in ("a red fox", "a blue car")
             for j in (0, 1)]
    assert len({s for _, s in order}) == 4  # every trajectory has its own noise
    assert order[1][1] == order[0][1] + 1 and {it["seed"] for it in reader.items} == {s for _, s in order}
    for n, (text, seed) in enumerate(order):
        pid = ds.prompt_id(text, "ugly")
        item = next(it for it in reader.items if it["key"] == ds.item_key(pid, seed, 0))
        t = reader.load_item(item)
        evs = log[n * STEPS:(n + 1) * STEPS]
        sig = torch.stack([e["sigma"][0] for e in evs])
        assert torch.equal(t["sigma"], sig.float())
        assert torch.equal(t["step"], torch.arange(STEPS))
        assert torch.equal(t["cfg"], torch.full((STEPS,), 5.0))
        rc = torch.cat([raw_from_denoised(e["input"], e["cond_denoised"], e["sigma"]) for e in evs]).half()
        ru = torch.cat([raw_from_denoised(e["input"], e["uncond_denoised"], e["sigma"]) for e in evs]).half()
        assert torch.equal(t["cond"], rc) and torch.equal(t["uncond"], ru)
        assert torch.equal(t["x"], torch.cat([e["input"] for e in evs]).half())
        # the CFG output rebuilt from the stored pair matches the sampler's own CFG output at every step
        guided = torch.cat([raw_from_denoised(e["input"], e["denoised"], e["sigma"]) for e in evs])
        rebuilt = t["uncond"].float() + (t["cond"].float() - t["uncond"].float()) * t["cfg"].view(-1, 1, 1, 1)
        assert (rebuilt - guided).abs().max() < 2e-2 * guided.abs().max()
        # prompt features are the conditioning that was sampled with
        pos, neg = reader.prompt_features(pid)
        assert torch.equal(pos.tokens[0], conds[text][0][0][0].half().float())
        assert torch.equal(neg.tokens[0], conds["ugly"][0][0][0].half().float())
        assert reader.manifest["prompts"][pid]["positive"] == text

    # images (latents) are bit-identical with and without recording
    latent = torch.zeros(1, 4, 16, 16)
    last = order[-1][1]
    plain = comfy.sample.sample(tm.patcher, comfy.sample.prepare_noise(latent, last), STEPS, 5.0, "euler", "normal",
                                conds["a blue car"], conds["ugly"], latent, disable_pbar=True, seed=last)
    assert torch.equal(plain, res.latent)


def test_batched_collection_records_each_row_and_resumes(tiny_sd15, dirs):
    """batch_size rows of one prompt per sampling call: every row is its own trajectory (own noise), exactly what
    sampling that batch gives; a rerun finds everything; the j-th trajectory keeps its place in the seed scheme."""
    import comfy.sample
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect, collect_batch

    tm = tiny_sd15
    conds = _conds(tm)
    tm.reset_calls()
    res = _batch(collect, tm.patcher, conds, "batched", prompts=["a red fox"], batch_size=2, seeds_per_prompt=3)
    assert len(res.written) == 3 and tm.calls == [4] * STEPS + [2] * STEPS  # rows 2 + 1, cond and uncond batched
    reader = ds.DatasetReader(res.folder)
    pid = ds.prompt_id("a red fox", "ugly")
    s0, s2 = collect_batch.ds.trajectory_seed(10, pid, 0), collect_batch.ds.trajectory_seed(10, pid, 2)
    assert sorted((it["seed"], it["batch_index"]) for it in reader.items) == [(s0, 0), (s0, 1), (s2, 0)]
    rows = {(it["seed"], it["batch_index"]): reader.load_item(it) for it in reader.items}
    assert not torch.equal(rows[(s0, 0)]["x"][0], rows[(s0, 1)]["x"][0])  # different noise per row
    latent = torch.zeros(2, 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent, s0)
    for b in (0, 1):  # x_t at the first step is row b of that seed's noise, scaled by the first σ
        cos = torch.nn.functional.cosine_similarity(rows[(s0, b)]["x"][0].float().flatten(), noise[b].flatten(), dim=0)
        assert cos > 0.9999
    tm.reset_calls()
    again = _batch(collect, tm.patcher, conds, "batched", prompts=["a red fox"], batch_size=2, seeds_per_prompt=3)
    assert tm.calls == [] and len(again.skipped) == 3 and not again.written


def test_rerun_collects_damaged_items_again(tiny_sd15, dirs):
    """Issue 14: a truncated, an emptied and a deleted shard are found by the next Collect Batch, which samples those
    trajectories again (and only those); Reflect's reader then sees every item intact."""
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect, collect_batch

    tm = tiny_sd15
    conds = _conds(tm)
    res = _batch(collect, tm.patcher, conds, "repair", seeds_per_prompt=2)
    keys = sorted(res.written)
    assert len(keys) == 4
    shards = [res.folder / f"traj-{k}.safetensors" for k in keys]
    good = shards[0].read_bytes()
    shards[0].write_bytes(good[: len(good) // 3])
    shards[1].write_bytes(b"")
    shards[2].unlink()
    assert len(ds.DatasetReader(res.folder).items) == 1
    tm.reset_calls()
    again = _batch(collect, tm.patcher, conds, "repair", seeds_per_prompt=2)
    assert sorted(again.written) == keys[:3] and len(again.skipped) == 1
    assert len(tm.calls) == 3 * STEPS  # the three damaged trajectories, nothing else
    r = ds.DatasetReader(res.folder)
    assert len(r.items) == 4 and not r.skipped
    assert shards[0].read_bytes() == good  # sampling is deterministic: the same trajectory again


def test_collect_node_wraps_any_sampler(tiny_sd15, dirs, comfy_install):
    import comfy.sample
    import comfy.samplers
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect, collect_batch

    tm = tiny_sd15
    (wrapped,) = collect.CoRe2Collect().wrap(tm.patcher, "node", False, prompt_label="fox")
    session = collect.session_of(wrapped)
    latent = tm.empty_latent(2, 16, 16)
    noise = comfy.sample.prepare_noise(latent, 5)
    # KSampler path, batch of 2 = two trajectories
    a = comfy.sample.sample(wrapped, noise, STEPS, 4.0, "euler", "normal", tm.positive, tm.negative, latent,
                            disable_pbar=True, seed=5)
    b = comfy.sample.sample(tm.patcher, noise, STEPS, 4.0, "euler", "normal", tm.positive, tm.negative, latent,
                            disable_pbar=True, seed=5)
    assert torch.equal(a, b)
    # SamplerCustomAdvanced path: a CFGGuider driven directly, 2nd-order sampler (2 evaluations per step)
    guider = comfy.samplers.CFGGuider(wrapped)
    guider.set_conds(tm.positive, tm.negative)
    guider.set_cfg(6.0)
    sigmas = comfy.samplers.KSampler(wrapped, steps=4, device="cpu", sampler="heun", scheduler="karras").sigmas
    one = tm.empty_latent(1, 16, 16)
    guider.sample(comfy.sample.prepare_noise(one, 9), one, comfy.samplers.sampler_object("heun"), sigmas, seed=9,
                  disable_pbar=True)
    session.recorder.flush()  # without sampler wrappers (2024 ComfyUI) the last run is committed here

    reader = ds.DatasetReader(session.folder)
    assert len(reader.items) == 3
    pids = {it["prompt_id"] for it in reader.items}
    assert len(pids) == 1  # same conditioning: one prompt, identified by its tensors
    assert reader.manifest["prompts"][pids.pop()]["positive"] == "fox"
    ks_items = [it for it in reader.items if it["n"] == STEPS]
    assert sorted(it["batch_index"] for it in ks_items) == [0, 1]
    t0, t1 = (reader.load_item(it) for it in sorted(ks_items, key=lambda it: it["batch_index"]))
    assert torch.equal(t0["step"], torch.arange(STEPS)) and torch.allclose(t0["cfg"], torch.full((STEPS,), 4.0), atol=1e-3)
    assert not torch.equal(t0["cond"], t1["cond"]) and "x" not in t0
    heun = reader.load_item(next(it for it in reader.items if it["n"] != STEPS))
    assert heun["cond"].shape[0] == 7  # heun: 2 evaluations per step except the last
    assert torch.allclose(heun["cfg"], torch.full((7,), 6.0), atol=1e-3)
    if hasattr(__import__("comfy.samplers").samplers, "CFGGuider") and collect._pe is not None:
        # sampler wrappers give the true seed and the σ schedule (step index per schedule step)
        assert {it["seed"] for it in ks_items} == {5}
        assert heun["step"].tolist() == [0, 1, 1, 2, 2, 3, 3]
    else:
        assert all(it.get("seed_source") == "noise-hash" for it in reader.items)
        assert heun["step"].tolist() == list(range(7))


def test_kill_mid_batch_then_resume(tiny_sd15, dirs):
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect, collect_batch

    prompts = ["a red fox", "a blue car", "a green tree"]
    script = dirs / "collector.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]  # tests/: test_collect's own helpers
        from tools import comfy_env
        comfy_env.activate()
        comfy_env.load_pack()
        from comfyui_core2.nodes import collect, collect_batch, paths
        if paths.folder_paths is not None:
            paths.folder_paths.set_output_directory({str(dirs / 'output')!r})
        import test_collect
        from testkit import tiny_models
        tm = tiny_models.build_sd15()
        conds = test_collect._conds3(tm)
        collect_batch.collect_batch(tm.patcher, {prompts!r}, "ugly", conds.__getitem__, seeds_per_prompt=2, seed=10,
                              steps={STEPS}, cfg=5.0, sampler_name="euler", scheduler="normal", width=128, height=128,
                              dataset_name="killed", store_x=False, on_item_done=lambda *a: time.sleep(0.4))
        """))
    folder = dirs / "output" / "core2_datasets" / "killed"
    proc = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=str(dirs),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0, done = time.time(), 0
    try:
        while time.time() - t0 < 90 and proc.poll() is None:
            try:
                done = len(ds._read_manifest(folder)["items"])
            except (OSError, ValueError):
                done = 0
            if done >= 2:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].decode(errors="replace")
    assert done >= 2, f"collector never wrote 2 items:\n{out[-3000:]}"

    reader = ds.DatasetReader(folder)  # re-opens cleanly after the kill
    n_before = len(reader.items)
    assert 2 <= n_before < 6
    assert all((folder / it["shard"]).is_file() for it in reader.items)

    tm = tiny_sd15
    res = collect_batch.collect_batch(tm.patcher, prompts, "ugly", _conds3(tm).__getitem__, seeds_per_prompt=2, seed=10,
                                steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal", width=128, height=128,
                                dataset_name="killed", store_x=False)
    assert len(res.skipped) == n_before and len(res.written) == 6 - n_before
    assert len(tm.calls) == (6 - n_before) * STEPS  # only the missing items were sampled
    reader = ds.DatasetReader(folder)
    assert len(reader.items) == 6 and len({it["key"] for it in reader.items}) == 6
    assert sorted(p.name for p in folder.glob("traj-*")) == sorted(it["shard"] for it in reader.items)
    assert not list(folder.glob(".*.tmp"))
    # a third run has nothing left to do
    tm.reset_calls()
    res = collect_batch.collect_batch(tm.patcher, prompts, "ugly", _conds3(tm).__getitem__, seeds_per_prompt=2, seed=10,
                                steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal", width=128, height=128,
                                dataset_name="killed", store_x=False)
    assert tm.calls == [] and len(res.skipped) == 6


def _conds3(tm):
    c = _conds(tm)
    c["a green tree"] = [[tm.positive[0][0].flip(1), dict(tm.positive[0][1])]]
    return c


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", "", ".hidden", "x\\y"])
def test_dataset_names_cannot_escape(tiny_sd15, dirs, name):
    from comfyui_core2.nodes import collect, collect_batch

    with pytest.raises(ValueError, match="CoRe²"):
        collect.CoRe2Collect().wrap(tiny_sd15.patcher, name, False)
    with pytest.raises(ValueError, match="CoRe²"):
        _batch(collect, tiny_sd15.patcher, _conds(tiny_sd15), name)
    assert tiny_sd15.calls == []
    assert not list((dirs).glob("escape*")) and not (dirs / "output" / "escape").exists()


def test_cfg_one_is_refused(tiny_sd15, dirs):
    import comfy.sample
    from comfyui_core2.nodes import collect, collect_batch

    tm = tiny_sd15
    with pytest.raises(ValueError, match="cfg > 1"):
        _batch(collect, tm.patcher, _conds(tm), "cfg1", cfg=1.0)
    assert tm.calls == [] and not (dirs / "output" / "core2_datasets" / "cfg1").exists()
    (wrapped,) = collect.CoRe2Collect().wrap(tm.patcher, "cfg1w", False)
    latent = tm.empty_latent(1)
    with pytest.raises(ValueError, match="cfg = 1"):
        comfy.sample.sample(wrapped, comfy.sample.prepare_noise(latent, 1), 4, 1.0, "euler", "normal", tm.positive,
                            tm.negative, latent, disable_pbar=True, seed=1)
    assert len(tm.calls) <= 1  # refused at the first evaluation (or before sampling with sampler wrappers)


def test_mixing_shapes_or_models_is_refused(tiny_sd15, tiny_sdxl, dirs):
    import comfy.sample
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect, collect_batch

    tm = tiny_sd15
    conds = _conds(tm)
    _batch(collect, tm.patcher, conds, "mix", prompts=["a red fox"], store_x=False)
    tm.reset_calls()
    with pytest.raises(ds.DatasetError, match="latent"):
        _batch(collect, tm.patcher, conds, "mix", prompts=["a blue car"], size=192)
    assert tm.calls == []
    (wrapped,) = collect.CoRe2Collect().wrap(tm.patcher, "mix", False)
    latent = tm.empty_latent(1, 24, 24)
    with pytest.raises(ds.DatasetError, match="24x24"):
        comfy.sample.sample(wrapped, comfy.sample.prepare_noise(latent, 1), 4, 5.0, "euler", "normal", tm.positive,
                            tm.negative, latent, disable_pbar=True, seed=1)
    with pytest.raises(ds.DatasetError, match="family"):
        collect.CoRe2Collect().wrap(tiny_sdxl.patcher, "mix", False)
    with pytest.raises(ds.DatasetError, match="family"):
        _batch(collect, tiny_sdxl.patcher, _conds(tiny_sdxl), "mix")
    assert len(ds.DatasetReader(dirs / "output" / "core2_datasets" / "mix").items) == 2


def test_prompts_file_is_confined(dirs):
    from comfyui_core2.nodes import collect, collect_batch

    (dirs / "input" / "list.txt").write_text("# comment\na fox\n\na car\na fox\n")
    assert collect_batch.read_prompt_file("list.txt") == ["a fox", "a car"]
    assert "list.txt" in collect_batch.prompt_files()
    (dirs / "secret.txt").write_text("x")
    for bad in ("../secret.txt", "/etc/passwd", "list.json"):
        with pytest.raises((ValueError, FileNotFoundError)):
            collect_batch.read_prompt_file(bad)


# --- the recorder alone (no ComfyUI) ------------------------------------------------------------------------------

def _ev(sigma, b=2, cfg=3.0):
    from comfyui_core2.core2.recorder import Evaluation

    return Evaluation(sigma=torch.full((b,), float(sigma)), cond=torch.randn(b, 4, 2, 2), uncond=torch.randn(b, 4, 2, 2), cfg=cfg)


def test_recorder_splits_runs_on_sigma_and_surfaces_errors():
    from comfyui_core2.core2.recorder import RecorderError, TrajectoryRecorder

    runs = []
    rec = TrajectoryRecorder(runs.append, max_pending=2)
    for s in (3.0, 2.0, 1.0, 5.0, 1.0):  # two implicit runs
        rec.record(_ev(s))
    rec.flush()
    assert [r.evaluations for r in runs] == [3, 2] and len(runs[0].trajectories) == 2
    assert runs[0].trajectories[1].tensors["sigma"].tolist() == [3.0, 2.0, 1.0]
    assert runs[1].trajectories[0].tensors["step"].tolist() == [0, 1]

    def bad_sink(run):
        raise OSError("disk full")

    rec2 = TrajectoryRecorder(bad_sink, max_pending=1)
    rec2.begin_run({"seed": 1})
    for s in (3.0, 2.0):
        rec2.record(_ev(s))
    with pytest.raises(RecorderError, match="disk full"):
        rec2.end_run(wait=True)
    # after an error the recorder keeps working and is not blocked
    rec2.begin_run({})
    rec2.record(_ev(1.0))
    rec2.abort_run()
    rec2.close()
    rec.close()


def test_recorder_does_not_block_sampling_on_slow_disk():
    from comfyui_core2.core2.recorder import TrajectoryRecorder

    gate = threading.Event()
    runs = []

    def slow_sink(run):
        gate.wait(10)
        runs.append(run)

    rec = TrajectoryRecorder(slow_sink, max_pending=64)
    t0 = time.perf_counter()
    for r in range(3):
        rec.begin_run({"seed": r})
        for s in (3.0, 2.0, 1.0):
            rec.record(_ev(s))
        rec.end_run(wait=False)
    assert time.perf_counter() - t0 < 1.0 and not runs
    gate.set()
    rec.close()
    assert [r.meta["seed"] for r in runs] == [0, 1, 2]


def _tiny_clip(tmp_path):
    """A real ComfyUI CLIP (SD1 text encoder class + tokenizer) shrunk to 1 layer, deterministic weights."""
    import comfy.sd1_clip
    from testkit import tiny_models

    if not (Path(comfy.sd1_clip.__file__).parent / "sd1_tokenizer" / "vocab.json").is_file():
        pytest.skip("this ComfyUI ships no CLIP tokenizer files (notcomfy): the CLIP path runs with COMFYUI_DIR")
    import comfy.sd
    cfg = {"hidden_size": 768, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
           "hidden_act": "quick_gelu", "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 768,
           "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1}
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(cfg))

    class Target:
        params = {"textmodel_json_config": str(path), "clip_model": comfy.sd1_clip.SDClipModel}
        clip = comfy.sd1_clip.SD1ClipModel
        tokenizer = comfy.sd1_clip.SD1Tokenizer

    clip = comfy.sd.CLIP(Target())
    tiny_models.init_weights(clip.cond_stage_model, 3)
    return clip


def test_batch_node_with_a_real_clip(tiny_sd15, dirs):
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect, collect_batch

    clip = _tiny_clip(dirs)
    node = collect_batch.CoRe2CollectBatch()
    (dirs / "input" / "more.txt").write_text("a green tree\n")
    args = dict(model=tiny_sd15.patcher, clip=clip, prompts="a red fox\n\n# skipped\na blue car", prompts_file="more.txt",
                negative_prompt="blurry", seeds_per_prompt=1, seed=3, steps=4, cfg=5.0, sampler_name="euler",
                scheduler="normal", width=128, height=128, dataset_name="clipped", store_x=False)
    out = node.collect(**args)
    image, name = out["result"]
    assert name == "clipped" and image.shape == (1, 128, 128, 3) and torch.isfinite(image).all()
    reader = ds.DatasetReader(dirs / "output" / "core2_datasets" / "clipped")
    assert sorted(p["positive"] for p in reader.manifest["prompts"].values()) == ["a blue car", "a green tree", "a red fox"]
    pid = ds.prompt_id("a red fox", "blurry")
    pos, neg = reader.prompt_features(pid)
    want = collect_batch.encode_text(clip, "a red fox")[0]
    assert torch.equal(pos.tokens[0], want[0][0].half().float())
    assert torch.equal(pos.pooled[0], want[1]["pooled_output"][0].half().float())
    tiny_sd15.reset_calls()
    node.collect(**args)  # everything is there already
    assert tiny_sd15.calls == []


def test_recorded_step_index_is_the_guiders_step_map():
    """One owner for "which step is this σ": the recorder's step index is StepMap.index, including an evaluation
    at a window's last (non-zero) σ, which belongs to the window's last step (there is no step after it)."""
    from comfyui_core2.core2.recorder import step_index
    from comfyui_core2.core2.schedule import StepMap

    window = [14.6, 7.0, 3.1, 1.2, 0.4]
    m = StepMap(window, 0)
    for sigma in (20.0, 14.6, 10.0, 7.0, 7.0 * (1 + 5e-5), 2.0, 1.2, 0.8, 0.4):
        assert step_index(window, sigma, 99) == m.index(sigma)
    assert step_index(window, 0.4, 99) == 3 and step_index(window, 7.0, 99) == 1
    assert step_index(None, 3.0, 5) == 5 and step_index([3.0], 3.0, 5) == 0


def test_shards_together_collect_exactly_what_one_run_collects(tiny_sd15, dirs):
    """Issue 20: three shards into one dataset = one unsharded run: the same items, bit-identical tensors; each shard
    samples only its own part, and a bad shard is refused before any work."""
    from safetensors.torch import load_file

    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.nodes import collect_batch

    tm = tiny_sd15
    conds, prompts = _conds3(tm), ["a red fox", "a blue car", "a green tree"]
    whole = _batch(collect_batch, tm.patcher, conds, "whole", prompts=prompts, seeds_per_prompt=4)
    written, calls = [], []
    for i in range(3):
        tm.reset_calls()
        res = _batch(collect_batch, tm.patcher, conds, "sharded", prompts=prompts, seeds_per_prompt=4, shard_index=i,
                     shard_count=3)
        written += res.written
        calls.append(len(tm.calls) // STEPS)
        assert res.other_shards == 12 - len(res.written) - len(res.skipped)
        assert "left to the other shards" in collect_batch.batch_report(res)
    assert sorted(written) == sorted(whole.written) and sum(calls) == 12 and max(calls) < 12
    a, b = ds.DatasetReader(whole.folder), ds.DatasetReader(res.folder)
    assert sorted(it["key"] for it in a.items) == sorted(it["key"] for it in b.items)
    for it in a.items:
        ta, tb = load_file(str(whole.folder / it["shard"])), load_file(str(res.folder / it["shard"]))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    with pytest.raises(ValueError, match="shard_index 3 of shard_count 3"):
        _batch(collect_batch, tm.patcher, conds, "sharded", prompts=prompts, shard_index=3, shard_count=3)


def test_per_machine_datasets_merge_into_what_one_run_collects(tiny_sd15, dirs, tmp_path):
    """Issue 20, machines without a shared lock: each shard into its own dataset, then `python -m core2.dataset_merge`
    joins them: the same items and bit-identical tensors as one unsharded run; merging again adds nothing; a damaged
    source item is left out and named; a source from another model is refused before anything is copied."""
    from safetensors.torch import load_file

    from comfyui_core2.core2 import dataset as ds, dataset_merge
    from comfyui_core2.nodes import collect_batch

    tm = tiny_sd15
    conds, prompts = _conds3(tm), ["a red fox", "a blue car", "a green tree"]
    whole = _batch(collect_batch, tm.patcher, conds, "whole", prompts=prompts, seeds_per_prompt=3)
    parts = [_batch(collect_batch, tm.patcher, conds, f"part{i}", prompts=prompts, seeds_per_prompt=3, shard_index=i,
                    shard_count=2).folder for i in range(2)]
    dest = tmp_path / "merged"
    report = dataset_merge.merge(dest, parts)
    assert sum(v["trajectories"] for v in report.values()) == 9
    a, b = ds.DatasetReader(whole.folder), ds.DatasetReader(dest)
    assert sorted(it["key"] for it in a.items) == sorted(it["key"] for it in b.items)
    for it in a.items:
        ta, tb = load_file(str(whole.folder / it["shard"])), load_file(str(dest / it["shard"]))
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert sum(v["trajectories"] for v in dataset_merge.merge(dest, parts).values()) == 0  # nothing new
    # a damaged source item: left out, counted; the rest still merges
    victim = sorted(parts[0].glob("traj-*.safetensors"))[0]
    victim.write_bytes(b"not a safetensors file")
    fresh = dataset_merge.merge(tmp_path / "merged2", parts)
    assert fresh[str(parts[0])]["damaged_left_out"] == 1
    assert sum(v["trajectories"] for v in fresh.values()) == 8
    # another model's dataset: refused, nothing written
    other = _batch(collect_batch, tiny_sd15.patcher, conds, "other", prompts=prompts[:1], seeds_per_prompt=1, size=64)
    with pytest.raises(ValueError):
        dataset_merge.merge(tmp_path / "merged3", [parts[1], other.folder])
    assert not (tmp_path / "merged3").exists()  # refused before the destination was made


def test_merge_refuses_a_manifest_that_names_paths(tmp_path):
    from comfyui_core2.core2 import dataset as ds

    w = ds.DatasetWriter(tmp_path / "d", {k: 1 for k in ds.MUST_MATCH})
    with pytest.raises(ds.DatasetError, match="not a CoRe² prompt id"):
        w.copy_prompt("../../evil", {"file": "x"}, b"")
    with pytest.raises(ds.DatasetError, match="not a CoRe² prompt id"):
        w.copy_trajectory({"prompt_id": "../x", "seed": 1, "batch_index": 0}, b"")


def test_steered_collection_follows_the_weak_model_and_records_both_passes(tiny_sd15, dirs):
    """steer_with: the picture is exactly what CoRe² all-fast sampling with that weak model gives, while every step
    still runs and records the real unconditional pass (2 passes), and the dataset says which model steered it."""
    from comfyui_core2.core2 import dataset as ds
    from comfyui_core2.core2.guidance import raw_from_denoised
    from comfyui_core2.core2.weak import WeakModel
    from comfyui_core2.nodes import collect, refine

    class Affine(WeakModel):
        name = "affine steer"

        def predict(self, raw_cond, sigma, cfg_scale, step, context):
            return raw_cond * 1.3 + 0.05 * sigma.view(-1, 1, 1, 1).clamp(max=1.0)

    tm = tiny_sd15
    conds = _conds(tm)
    model, log = _capture(tm.patcher)
    tm.reset_calls()
    res = _batch(collect, model, conds, "steered", prompts=["a red fox"], seeds_per_prompt=1, steer_with=Affine())
    assert len(res.written) == 1 and tm.calls == [2] * STEPS  # cond and uncond at every step
    seed = ds.trajectory_seed(10, ds.prompt_id("a red fox", "ugly"), 0)
    (ref,) = refine.CoRe2KSampler().sample(tm.patcher, seed, STEPS, 5.0, "euler", "normal", conds["a red fox"],
                                           conds["ugly"], {"samples": torch.zeros(1, 4, 16, 16)}, 1.0, Affine(), 1.0, 0)
    # the picture followed the fast steps (up to float noise: here the cond pass ran batched with the uncond pass)
    assert (res.latent - ref["samples"]).abs().max() < 1e-4 * ref["samples"].abs().max()
    cfg_plain = torch.cat([e["uncond_denoised"] + (e["cond_denoised"] - e["uncond_denoised"]) * 5.0 for e in log[:1]])
    assert (log[0]["denoised"] - cfg_plain).abs().max() > 1e-2  # and not CFG's: the sampler stepped with the weak model
    reader = ds.DatasetReader(res.folder)
    t = reader.load_item(reader.items[0])
    ru = torch.cat([raw_from_denoised(e["input"], e["uncond_denoised"], e["sigma"]) for e in log]).half()
    rc = torch.cat([raw_from_denoised(e["input"], e["cond_denoised"], e["sigma"]) for e in log]).half()
    assert torch.equal(t["uncond"], ru) and torch.equal(t["cond"], rc)
    implied = (5.0 * rc.float() - (rc.float() * 1.3)) / 4.0  # what a fast step's post-cfg would have seen
    assert (t["uncond"].float() - implied).abs().max() > 1e-2  # a real pass, not the weak model's implied one
    assert "affine steer" in json.dumps(reader.manifest)
    # the plain Collect node under the CoRe² sampler records the same way (its fast steps run both passes too)
    wrapped = collect.CoRe2Collect().wrap(tm.patcher, "steered_node", True)[0]
    tm.reset_calls()
    (out,) = refine.CoRe2KSampler().sample(wrapped, seed, STEPS, 5.0, "euler", "normal", conds["a red fox"],
                                           conds["ugly"], {"samples": torch.zeros(1, 4, 16, 16)}, 1.0, Affine(), 1.0, 2)
    assert tm.calls == [2] * STEPS
    collect.session_of(wrapped).close()
    node_reader = ds.DatasetReader(ds_folder := res.folder.parent / "steered_node")
    assert len(node_reader.items) == 1, ds_folder
    markers = collect._pe is not None and hasattr(wrapped, "add_wrapper_with_key")  # ComfyUI 2025+ (run settings)
    assert ("affine steer" in json.dumps(node_reader.manifest)) == markers
