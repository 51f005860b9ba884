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
