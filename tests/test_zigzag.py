"""Z-CoRe² and Z-Sampling: zigzag Euler sampling with the weak model (docs/method.md §5)."""
import pytest
import torch

import comfy.sample
from comfyui_core2.core2.weak import IdentityWeakModel, WeakModel
from comfyui_core2.core2.zigzag import euler_invert, euler_step, to_d
from comfyui_core2.nodes import refine


class AffineWeak(WeakModel):
    name = "affine test weak"

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        return raw_cond * 1.3


def run(tm, method, steps=6, sampler="euler", zigzag_steps=-1, weak=None):
    latent = tm.empty_latent(1)
    (out,) = refine.CoRe2KSampler().sample(tm.patcher, 1, steps, 5.0, sampler, "normal", tm.positive, tm.negative,
                                           {"samples": latent}, 1.0, weak or AffineWeak(), 1.5, steps, method=method,
                                           zigzag_steps=zigzag_steps)
    return out["samples"]


@pytest.mark.parametrize("n", [4, 7])
def test_call_counts(tiny_sd15, n):
    tm = tiny_sd15
    run(tm, "z-core", steps=n)
    assert tm.samples_evaluated == 5 * n - 3
    tm.reset_calls()
    run(tm, "z-sampling", steps=n)
    assert tm.samples_evaluated == 6 * n - 4
    tm.reset_calls()
    run(tm, "z-core", steps=n, zigzag_steps=2)  # only the first two steps zigzag: +3 passes each
    assert tm.samples_evaluated == 2 * n + 3 * 2


def test_summary_line_compares_with_plain_cfg_at_the_same_steps(tiny_sd15, caplog):
    import logging

    caplog.set_level(logging.INFO)
    run(tiny_sd15, "z-sampling", steps=4)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("CoRe² (z-sampling)"))
    assert "3 zigzag inversions, 20 model passes vs 8 for CFG (150% more passes)" in line, line


def test_euler_inversion_is_exact_with_the_same_prediction(tiny_sd3):
    tm = tiny_sd3
    import comfy.samplers

    model = tm.patcher.model
    sigmas = comfy.samplers.calculate_sigmas(model.model_sampling, "normal", 8)
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * sigmas[2]
    import comfy.sampler_helpers

    conds = comfy.sampler_helpers.convert_cond(tm.positive)
    conds = comfy.samplers.encode_model_conds(model.extra_conds, conds, x, x.device, "positive")
    kwargs = {k: v.process_cond(batch_size=1, device=x.device).cond for k, v in conds[0]["model_conds"].items()}
    with torch.no_grad():
        den = model.apply_model(x, sigmas[2:3], **kwargs)
    d = to_d(x, sigmas[2], den)
    back = euler_invert(euler_step(x, d, sigmas[2], sigmas[3]), d, sigmas[2], sigmas[3])
    assert (back - x).abs().max() <= 1e-5


def test_methods_differ_and_are_finite(tiny_sd15):
    tm = tiny_sd15
    outs = {m: run(tm, m) for m in ("core", "z-core", "z-sampling")}
    for o in outs.values():
        assert torch.isfinite(o).all()
    assert (outs["z-core"] - outs["z-sampling"]).abs().max() > 1e-3
    assert (outs["z-core"] - outs["core"]).abs().max() > 1e-3


def test_z_core_with_identity_weak_and_w_equals_1_inverts_with_cond(tiny_sd15):
    """With f = identity the Z-CoRe² inversion is the plain conditional prediction, i.e. Z-Sampling at inv_cfg = 1."""
    tm = tiny_sd15
    latent = tm.empty_latent(1)
    common = (tm.patcher, 1, 5, 5.0, "euler", "normal", tm.positive, tm.negative, {"samples": latent}, 1.0,
              IdentityWeakModel(), 1.0, 5)
    (a,) = refine.CoRe2KSampler().sample(*common, method="z-core")
    (b,) = refine.CoRe2KSampler().sample(*common, method="z-sampling", inv_cfg=1.0)
    assert (a["samples"] - b["samples"]).abs().max() <= 1e-5


def test_non_euler_sampler_is_refused(tiny_sd15):
    with pytest.raises(ValueError, match="defined for the euler sampler"):
        run(tiny_sd15, "z-core", sampler="dpmpp_2m")
    assert tiny_sd15.calls == []


class StepLog(WeakModel):
    """Records the step index and σ of every weak-model call (the official weights pick their LoRA by step)."""

    name = "step log"

    def __init__(self):
        super().__init__()
        self.seen = []

    def predict(self, raw_cond, sigma, cfg_scale, step, context):
        self.seen.append((step.index, float(sigma.flatten()[0])))
        return raw_cond * 1.3


def test_z_core_inversion_labelled_with_its_step(tiny_sd15):
    """The inversion after step i's first denoise runs at σ_{i+1} but belongs to step i (official: step i's index)."""
    import comfy.samplers

    weak = StepLog()
    n = 5
    run(tiny_sd15, "z-core", steps=n, weak=weak)
    sigmas = comfy.samplers.calculate_sigmas(tiny_sd15.patcher.get_model_object("model_sampling"), "normal", n)
    # z-core denoises with full CFG; the weak model serves the inversions, one per zigzag step (all but the last)
    expected = [(i, float(sigmas[i + 1])) for i in range(n - 1)]
    assert [s for s, _ in weak.seen] == [s for s, _ in expected]
    assert [sig for _, sig in weak.seen] == pytest.approx([sig for _, sig in expected], rel=1e-5)


def test_extrapolate_names_its_start_and_target():
    """Z-CoRe²'s inversion goes from the conditional prediction past the weak model's (cond + w·(weak − cond));
    weak-to-strong guidance goes from the weak prediction past the strong one: both are guidance.extrapolate."""
    from comfyui_core2.core2 import guidance

    cond, weak, strong = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([4.0])
    assert float(guidance.extrapolate(cond, weak, 1.5)) == 4.0  # 1 + 1.5·(3 − 1)
    assert guidance.extrapolate(cond, weak, 1.0) is weak  # w = 1: the target itself, bit for bit
    assert float(guidance.weak_to_strong(weak, strong, 2.0)) == 5.0 and guidance.weak_to_strong(weak, strong, 1.0) is strong
