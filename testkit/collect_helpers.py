"""A minimal trajectory recorder for tests: sample a tiny model with ComfyUI's comfy.sample.sample and record
(cond, uncond raw outputs, σ, step, g) per step through a post-cfg function into core2.dataset.DatasetWriter.

Independent of the real Collect nodes (nodes/collect.py) on purpose.
"""
from __future__ import annotations

import torch


def prompt_variants(tm, n: int, seed: int = 1234, words: int = 8) -> list:
    """n distinct positive CONDITIONINGs with the tiny model's structure.

    Like real text-encoder outputs, the variants share most token features (start and padding tokens) and differ
    in `words` token positions and in part of the pooled vector.
    """
    g = torch.Generator().manual_seed(seed)
    base_t, base_d = tm.positive[0]
    out = []
    for _ in range(n):
        d = dict(base_d)
        if "pooled_output" in d:
            p = d["pooled_output"]
            d["pooled_output"] = 0.8 * p + 0.6 * torch.randn(p.shape, generator=g) * p.std()
        t = base_t.clone()
        t[:, 1:1 + words] = torch.randn(t[:, 1:1 + words].shape, generator=g) * base_t.std()
        out.append([[t, d]])
    return out


def _features(cond):
    from comfyui_core2.core2.weak import PromptFeatures

    t, d = cond[0]
    pooled = d.get("pooled_output")
    return PromptFeatures(t, pooled)


def collect(tm, folder, n_prompts: int = 6, seeds=(1,), batch: int = 1, steps: int = 8, cfg: float = 5.0, h: int = 16, w: int = 16,
            sampler: str = "euler", scheduler: str = "normal", prompt_seed: int = 1234, distinct_seeds: bool = False,
            store_x: bool = False):
    """Write a dataset of n_prompts × len(seeds) × batch trajectories to `folder`; returns the folder.

    distinct_seeds=False: every prompt is sampled from the same noise seeds, so a split by prompt measures
    generalisation to new prompts on known noise. True: each prompt gets its own seeds (seed + 101·i), so held-out
    prompts also mean unseen noise. (The tiny random UNets have no guidance structure that transfers to unseen
    noise at test-sized data: even the mean guidance direction per σ scores ≈1.03 there.)
    store_x: also store the noisy latents x_t (as Collect's store_x does).
    """
    import comfy.sample

    from comfyui_core2.core2 import guidance
    from comfyui_core2.core2.dataset import DatasetWriter
    from comfyui_core2.nodes import model_info

    ident = model_info.identity(tm.patcher)
    header = {"family": model_info.family(tm.patcher), "prediction": model_info.prediction(tm.patcher),
              "latent_channels": model_info.latent_channels(tm.patcher), "latent_hw": [h, w],
              "base_model_hash": ident["key_hash"], "base_model_name": ident["name"]}
    writer = DatasetWriter(folder, header)
    writer.note_run({"sampler": sampler, "scheduler": scheduler, "steps": steps, "cfg": cfg})
    negative = tm.negative
    for i, pos in enumerate(prompt_variants(tm, n_prompts, prompt_seed)):
        pid = writer.add_prompt(f"prompt {prompt_seed}-{i}", "negative", _features(pos), _features(negative))
        for seed0 in seeds:  # one sampling call per seed; its `batch` latent rows are separate trajectories
            seed = seed0 + 101 * i if distinct_seeds else seed0
            rec = {"cond": [], "uncond": [], "sigma": [], "x": []}

            def post_cfg(args):
                x, s = args["input"], args["sigma"]
                rec["cond"].append(guidance.raw_from_denoised(x, args["cond_denoised"], s))
                rec["uncond"].append(guidance.raw_from_denoised(x, args["uncond_denoised"], s))
                rec["sigma"].append(float(s.reshape(-1)[0]))
                rec["x"].append(x.clone())
                return args["denoised"]

            m = tm.patcher.clone()
            m.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
            latent = tm.empty_latent(batch, h, w)
            noise = comfy.sample.prepare_noise(latent, seed)
            comfy.sample.sample(m, noise, steps, cfg, sampler, scheduler, pos, negative, latent, disable_pbar=True, seed=seed)
            n = len(rec["sigma"])
            cond, uncond, xs = (torch.stack(rec[k], 1) for k in ("cond", "uncond", "x"))  # [B,S,C,H,W]
            for row in range(batch):
                tensors = {"cond": cond[row], "uncond": uncond[row], "sigma": torch.tensor(rec["sigma"]),
                           "cfg": torch.full((n,), float(cfg)), "step": torch.arange(n)}
                if store_x:
                    tensors["x"] = xs[row]
                writer.add_trajectory(pid, seed, row, tensors)
    return folder
