"""Official CoRe² weights end to end: file in models/core2 → loader → CoRe² KSampler on a (tiny) SDXL model."""
import logging

import torch

from comfyui_core2.core2 import files
from comfyui_core2.core2.weights_io import load_weak_model
from comfyui_core2.nodes import refine
from test_official import SDXL_TEXT, random_state_dict


def test_official_sdxl_file_runs_in_the_core2_ksampler(tiny_sdxl, tmp_path, caplog):
    path = tmp_path / "sdxl_noise_model.safetensors"
    files.atomic_save_safetensors(path, random_state_dict(SDXL_TEXT, 3))  # official key names, reduced width
    weak = load_weak_model(path)
    assert type(weak).__name__ == "OfficialWeakModel" and weak.family == "sdxl"
    tm = tiny_sdxl
    with caplog.at_level(logging.WARNING, logger="comfyui-core2"):
        (out,) = refine.CoRe2KSampler().sample(tm.patcher, 0, 6, 5.0, "euler", "karras", tm.positive, tm.negative,
                                               {"samples": tm.empty_latent(1)}, 1.0, weak, 1.5, 2)
    assert torch.isfinite(out["samples"]).all()
    assert tm.calls == [2, 2, 1, 1, 1, 1]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "6 steps differ from the 50" in warnings and "scheduler 'karras'" in warnings


def test_official_sdxl_refuses_a_flow_model(tiny_sd3, tmp_path):
    import pytest

    path = tmp_path / "w.safetensors"
    files.atomic_save_safetensors(path, random_state_dict(SDXL_TEXT, 3))
    weak = load_weak_model(path)
    tm = tiny_sd3
    with pytest.raises(ValueError, match="built for sdxl models"):
        refine.CoRe2KSampler().sample(tm.patcher, 0, 4, 5.0, "euler", "normal", tm.positive, tm.negative,
                                      {"samples": tm.empty_latent(1)}, 1.0, weak, 1.5, 2)


def _official_sdxl(tmp_path, dtype=None):
    from comfyui_core2.core2 import official

    if dtype is None:
        path = tmp_path / "sdxl_noise_model.safetensors"
        files.atomic_save_safetensors(path, random_state_dict(SDXL_TEXT, 3))
        return load_weak_model(path)
    return official.load_official(random_state_dict(SDXL_TEXT, 3), dtype=dtype)


def _zero_out(cond):
    """What ComfyUI's ConditioningZeroOut does: tokens and pooled_output zeroed, the rest kept."""
    return [[torch.zeros_like(t), {**d, "pooled_output": torch.zeros_like(d["pooled_output"])}] for t, d in cond]


def test_official_prompt_svd_runs_on_float32_features_before_the_cast(tiny_sdxl, tmp_path):
    """A bf16 official net gets the prompt features in float32 and casts after its SVD (SDXL's `_s` completes the
    zero rows and is very sensitive to rounding before it)."""
    from comfyui_core2.core2.official.recipes import inputs_for
    from comfyui_core2.nodes import conditioning

    weak = _official_sdxl(tmp_path, torch.bfloat16)
    seen = []
    prepare = weak.prepare
    weak.prepare = lambda pos, neg: seen.append((pos, neg)) or prepare(pos, neg)
    tm = tiny_sdxl
    refine.CoRe2KSampler().sample(tm.patcher, 0, 2, 5.0, "euler", "normal", tm.positive, tm.negative,
                                  {"samples": tm.empty_latent(1)}, 1.0, weak, 1.5, 0)
    (pos, neg), = seen
    assert pos.tokens.dtype == pos.pooled.dtype == torch.float32
    want = inputs_for(weak.net.cfg, conditioning.features(tm.positive), None, dtype=torch.bfloat16)
    lossy = inputs_for(weak.net.cfg, conditioning.features(tm.positive).to(dtype=torch.bfloat16), None,
                       dtype=torch.bfloat16)
    got = prepare(pos, neg).inputs
    assert torch.equal(got.s, want.s) and torch.equal(got.v, want.v) and not torch.equal(lossy.s, want.s)


def test_denoise_reaches_the_weak_model(tiny_sdxl):
    from comfyui_core2.core2.weak import WeakModel

    class Log(WeakModel):
        name = "log"
        seen = []

        def predict(self, raw_cond, sigma, cfg_scale, step, context):
            self.seen.append(step.denoise)
            return raw_cond

    tm = tiny_sdxl
    for denoise in (1.0, 0.5):
        Log.seen = []
        refine.CoRe2KSampler().sample(tm.patcher, 0, 4, 5.0, "euler", "normal", tm.positive, tm.negative,
                                      {"samples": tm.empty_latent(1)}, denoise, Log(), 1.5, 2)
        assert Log.seen and set(Log.seen) == {denoise}


def test_official_sdxl_notes_a_negative_that_is_not_zero(tiny_sdxl, tmp_path, caplog):
    weak = _official_sdxl(tmp_path)
    tm = tiny_sdxl
    for negative, noted in ((tm.negative, True), (_zero_out(tm.positive), False)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="comfyui-core2"):
            refine.CoRe2KSampler().sample(tm.patcher, 0, 2, 5.5, "ddim", "ddim_uniform", tm.positive, negative,
                                          {"samples": tm.empty_latent(1)}, 1.0, weak, 1.5, 1)
        assert any("all-zero negative" in r.getMessage() for r in caplog.records) == noted
