"""Collect → Reflect → Refine on a tiny model, with the pack's own code at each stage."""
import torch

import comfy.sample
from comfyui_core2.core2 import train as trainer
from comfyui_core2.core2.weights_io import load_weak_model
from comfyui_core2.nodes import collect, collect_batch, paths, refine


def test_trained_weak_model_all_fast_is_closer_to_cfg_than_cfg1(tiny_sd15, comfy_folders):
    tm = tiny_sd15
    tmp_path = comfy_folders
    g = torch.Generator().manual_seed(5)
    prompts = [f"prompt {i}" for i in range(6)]
    conds = {p: [[torch.randn(1, 77, 768, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]
             for p in prompts + [""]}
    res = collect_batch.collect_batch(tm.patcher, prompts, "", lambda text: conds[text], seeds_per_prompt=2, seed=100,
                                steps=8, cfg=5.0, sampler_name="euler", scheduler="normal", width=128, height=128,
                                dataset_name="chain", store_x=False)
    folder = paths.datasets_dir() / "chain"
    out = tmp_path / "weak.safetensors"
    r = trainer.train(folder, out, trainer.TrainSettings(steps=300, batch_size=16, lr=1e-3, size="small",
                                                          val_fraction=0.0, seed=0))
    assert r.model is not None and res is not None
    weak = load_weak_model(out)

    # Tiny random UNets have no guidance structure that carries over to unseen noise (the Reflect notes measure
    # this), so the comparison uses collected (prompt, seed) pairs: the question is whether the weak model reproduces
    # CFG's trajectory from the conditional pass alone.
    from comfyui_core2.core2.dataset import prompt_id

    d_fast, d_cfg1 = [], []
    for i, p in enumerate(prompts[:3]):
        latent = tm.empty_latent(1)
        seed = collect_batch.ds.trajectory_seed(100, prompt_id(p, ""), 0)  # the first seed collected for this prompt
        noise = comfy.sample.prepare_noise(latent, seed)
        kw = dict(disable_pbar=True, seed=seed)
        cfg_img = comfy.sample.sample(tm.patcher, noise, 8, 5.0, "euler", "normal", conds[p], conds[""], latent, **kw)
        cfg1 = comfy.sample.sample(tm.patcher, noise, 8, 1.0, "euler", "normal", conds[p], conds[""], latent, **kw)
        (fast,) = refine.CoRe2KSampler().sample(tm.patcher, seed, 8, 5.0, "euler", "normal", conds[p], conds[""],
                                                {"samples": latent}, 1.0, weak, 1.0, 0)
        d_fast.append(float((fast["samples"] - cfg_img).norm()))
        d_cfg1.append(float((cfg1 - cfg_img).norm()))
    assert sum(d_fast) < 0.8 * sum(d_cfg1), (d_fast, d_cfg1)
