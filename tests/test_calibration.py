"""Guidance calibration (core2/calibration.py): a weak model's guidance made as strong as CFG's where the model has
no slow step to go on, measured on held-out rows after training and kept in the file.

What is checked: the measured gain is the energy ratio per σ band (clamped to [1, MAX_GAIN]), interpolation in log σ,
forged gains are refused (and a file carrying one is refused before it is used), predict() applies the gain only on
steps with nothing remembered. (That training stores the gain: tests/test_reflect.py.)
"""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_core2.core2 import arch, calibration
from comfyui_core2.core2.calibration import GuidanceGain
from comfyui_core2.core2.weak import PromptFeatures, StepInfo

SMALL = dict(width=16, mults=[1, 2], blocks=1, emb_dim=64)


def test_the_gain_is_the_energy_ratio_per_sigma_band():
    g = torch.Generator().manual_seed(0)
    sigma = torch.cat([torch.rand(200, generator=g) * 1.9 + 0.05, torch.rand(200, generator=g) * 8 + 2.1])  # 2 bands each
    true_e = torch.rand(400, generator=g) + 0.5
    short = torch.where(sigma < 2, 0.25, 0.64)  # predicted guidance 1/2 resp. 0.8 as long: energy ratio 4 resp. 1.5625
    gain = calibration.measure(sigma, true_e, true_e * short, bands=4)
    assert len(gain.gain) == 4
    assert gain.at(torch.tensor([0.1]))[0] == pytest.approx(2.0, rel=1e-6)
    assert gain.at(torch.tensor([9.9]))[0] == pytest.approx(1.25, rel=1e-6)
    longer = calibration.measure(sigma, true_e, true_e * 4.0)  # a model that over-guides is left as it is
    assert set(longer.gain) == {1.0}
    huge = calibration.measure(sigma, true_e, true_e * 1e-6)
    assert set(huge.gain) == {calibration.MAX_GAIN}
    assert calibration.measure(sigma[:5], true_e[:5], true_e[:5]) is None  # too few rows to say


def test_gain_interpolates_in_log_sigma_and_holds_beyond_the_knots():
    gain = GuidanceGain((math.log(0.1), math.log(10.0)), (2.0, 1.0))
    got = gain.at(torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0]))
    assert torch.allclose(got, torch.tensor([2.0, 2.0, 1.5, 1.0, 1.0]))
    assert gain.at(torch.tensor(1.0)).shape == (1,)
    assert GuidanceGain.from_meta(gain.as_meta()) == gain  # the file's JSON keeps it exactly


@pytest.mark.parametrize("meta, what", [
    ({"log_sigma": [0.0, 1.0], "gain": [1.0, 50.0]}, "within"),
    ({"log_sigma": [1.0, 0.0], "gain": [1.0, 1.5]}, "increasing"),
    ({"log_sigma": [0.0, float("nan")], "gain": [1.0, 1.5]}, "finite"),
    ({"log_sigma": [0.0], "gain": [1.0, 1.5]}, "as many"),
    ({"log_sigma": "0", "gain": [1.0]}, "two lists"),
    ({"log_sigma": [0.0, 1.0], "gain": [0.2, 1.0]}, "within"),
])
def test_forged_gains_are_refused(meta, what):
    with pytest.raises(ValueError, match=what):
        GuidanceGain.from_meta(meta)


def test_a_file_with_a_forged_gain_is_refused(tmp_path):
    from comfyui_core2.core2.weights_io import WeakModelFileError, load_weak_model, save_weak_model

    m = arch.build(arch.make_config("small", 4, 8, 0, **SMALL))
    ok, bad = tmp_path / "ok.safetensors", tmp_path / "bad.safetensors"
    save_weak_model(ok, m, {"guidance_gain": {"log_sigma": [0.0, 1.0], "gain": [1.5, 1.2]}})
    assert load_weak_model(ok).guidance_gain == GuidanceGain((0.0, 1.0), (1.5, 1.2))
    save_weak_model(bad, m, {"guidance_gain": {"log_sigma": [0.0, 1.0], "gain": [1.5, 1e6]}})
    with pytest.raises(WeakModelFileError, match="guidance calibration"):
        load_weak_model(bad)


def _predict(m, rc, x, sigma):
    ctx = m.prepare(PromptFeatures(torch.ones(1, 5, 8)), None)
    return m.predict(rc, sigma, 5.0, StepInfo(0, 10, extra={"x": x}), ctx)


def test_predict_scales_the_guidance_only_where_nothing_was_remembered():
    torch.manual_seed(0)
    m = arch.build(arch.make_config("small", 4, 8, 0, x_input=True, memory=True, **SMALL)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rc, x, sigma = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([3.0, 0.5])
    with torch.no_grad():
        raw = _predict(m, rc, x, sigma)
        m.guidance_gain = GuidanceGain((math.log(0.5), math.log(3.0)), (2.0, 1.5))
        calibrated = _predict(m, rc, x, sigma)
        m.observe_slow(rc, rc - torch.randn_like(rc), torch.tensor(4.0), StepInfo(0, 10))
        remembered = _predict(m, rc, x, sigma)
        m.guidance_gain = None
        remembered_raw = _predict(m, rc, x, sigma)
    # out = rc + (cfg − 1)·gain·(rc − r̂_u): the guidance term grows by the gain at each row's σ
    assert torch.allclose(calibrated[0] - rc[0], 1.5 * (raw[0] - rc[0]), atol=1e-5)
    assert torch.allclose(calibrated[1] - rc[1], 2.0 * (raw[1] - rc[1]), atol=1e-5)
    assert torch.equal(remembered, remembered_raw)  # a measured slow step to go on: the model's own strength
