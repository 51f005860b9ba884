"""CoRe² Official Preset: the official weights' sampling settings in one node."""
import pytest
import torch

import comfy.samplers
from comfyui_core2.core2.official import model as official_model
from comfyui_core2.nodes import presets

SDXL = presets.OFFICIAL["sdxl"].label
SD35 = presets.OFFICIAL["sd35"].label


def test_sdxl_preset_gives_the_official_settings(tiny_sdxl):
    m, steps, cfg, sampler, scheduler, notes = presets.CoRe2OfficialPreset().apply(tiny_sdxl.patcher, SDXL)
    assert (m, steps, cfg, sampler, scheduler) == (tiny_sdxl.patcher, 50, 5.5, "ddim", "ddim_uniform")
    assert "ConditioningZeroOut" in notes


def test_sd35_preset_applies_shift_3(tiny_sd3):
    base = presets.shifted(tiny_sd3.patcher, 1.0)  # SD3's own default is shift 3: start from another one
    before = base.get_model_object("model_sampling").sigmas.clone()
    m, steps, cfg, sampler, scheduler, notes = presets.CoRe2OfficialPreset().apply(base, SD35)
    assert (steps, cfg, sampler, scheduler) == (28, 3.5, "euler", "simple") and "empty negative" in notes
    got = m.get_model_object("model_sampling")
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert float(got.shift) == 3.0
    assert torch.allclose(got.sigmas.double(), 3 * t / (1 + 2 * t), atol=1e-6)  # σ(t) = shift·t / (1 + (shift − 1)·t)
    assert not torch.allclose(got.sigmas, before)
    assert torch.equal(base.get_model_object("model_sampling").sigmas, before)  # the input MODEL is unchanged


@pytest.mark.full_comfy
def test_sd35_shift_is_comfyuis_own_model_sampling_sd3(tiny_sd3):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    (ref,) = ModelSamplingSD3().patch(tiny_sd3.patcher, 3.0) if hasattr(ModelSamplingSD3, "FUNCTION") else \
        ModelSamplingSD3.execute(model=tiny_sd3.patcher, shift=3.0).args
    m = presets.CoRe2OfficialPreset().apply(tiny_sd3.patcher, SD35)[0]
    assert torch.equal(m.get_model_object("model_sampling").sigmas, ref.get_model_object("model_sampling").sigmas)


def test_a_model_of_another_family_is_refused_with_what_to_pick(tiny_sd15, tiny_sd3):
    with pytest.raises(ValueError, match=r"is for sd3 models, but the MODEL is sd15\. There is no official preset"):
        presets.CoRe2OfficialPreset().apply(tiny_sd15.patcher, SD35)
    with pytest.raises(ValueError, match=r"is for sdxl models, but the MODEL is sd3\. Pick 'SD3\.5 Large"):
        presets.CoRe2OfficialPreset().apply(tiny_sd3.patcher, SDXL)


def test_one_table_for_the_official_numbers():
    for variant, o in presets.OFFICIAL.items():
        assert official_model.VARIANT_INFO[variant] == (o.family, o.prediction, o.cfg, o.steps, o.sampler)
    outs = presets.CoRe2OfficialPreset.RETURN_TYPES
    assert outs[3] == comfy.samplers.KSampler.SAMPLERS and outs[4] == comfy.samplers.KSampler.SCHEDULERS


@pytest.mark.full_comfy
def test_preset_outputs_drive_ksampler_like_hand_set_widgets(tiny_sd3):
    import nodes
    from comfy_execution.validation import validate_node_input

    tm = tiny_sd3
    ks_inputs = nodes.KSampler.INPUT_TYPES()["required"]
    outs = presets.CoRe2OfficialPreset.RETURN_TYPES
    for slot, name in ((1, "steps"), (2, "cfg"), (3, "sampler_name"), (4, "scheduler")):
        assert validate_node_input(outs[slot], ks_inputs[name][0]), name  # ComfyUI accepts the links
    m, steps, cfg, sampler, scheduler, _ = presets.CoRe2OfficialPreset().apply(tm.patcher, SD35)
    latent = {"samples": tm.empty_latent(1)}
    (got,) = nodes.KSampler().sample(m, 1, steps, cfg, sampler, scheduler, tm.positive, tm.negative, latent, 1.0)
    (ref,) = nodes.KSampler().sample(presets.shifted(tm.patcher, 3.0), 1, 28, 3.5, "euler", "simple", tm.positive,
                                     tm.negative, latent, 1.0)
    assert torch.equal(got["samples"], ref["samples"])
