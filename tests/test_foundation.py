"""The harness itself: real ComfyUI, the four tiny families, the pack's packaging."""
import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_comfy_is_real(comfy_install):
    import comfy.samplers

    assert Path(comfy.samplers.__file__).resolve().is_relative_to(comfy_install.path)
    assert "euler" in comfy.samplers.KSampler.SAMPLERS


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_tiny_families_sample_and_count_calls(tiny_any, cfg):
    import comfy.sample

    tm = tiny_any
    latent = tm.empty_latent(batch=2, h=16, w=16)
    noise = comfy.sample.prepare_noise(latent, 7)
    out = comfy.sample.sample(tm.patcher, noise, 4, cfg, "euler", "normal", tm.positive, tm.negative, latent,
                              disable_pbar=True, seed=7)
    assert out.shape == latent.shape
    assert torch.isfinite(out).all()
    # one diffusion-model forward per step; cfg>1 batches cond+uncond (2 x batch), cfg=1 runs cond only
    per_call = 2 * 2 if cfg > 1 else 2
    assert tm.calls == [per_call] * 4


def test_tiny_cfg_changes_the_result(tiny_any):
    import comfy.sample

    tm = tiny_any
    latent = tm.empty_latent(1)
    noise = comfy.sample.prepare_noise(latent, 3)
    a = comfy.sample.sample(tm.patcher, noise, 3, 1.0, "euler", "normal", tm.positive, tm.negative, latent, disable_pbar=True, seed=3)
    b = comfy.sample.sample(tm.patcher, noise, 3, 5.0, "euler", "normal", tm.positive, tm.negative, latent, disable_pbar=True, seed=3)
    assert (a - b).abs().max() > 1e-2


def test_conditioning_structure(tiny):
    assert tiny("sd15").positive[0][0].shape[-1] == 768
    sdxl = tiny("sdxl").positive[0]
    assert sdxl[0].shape[-1] == 2048 and sdxl[1]["pooled_output"].shape[-1] == 1280
    assert {"width", "height", "crop_w", "crop_h", "target_width", "target_height"} <= set(sdxl[1])
    sd3 = tiny("sd3").positive[0]
    assert sd3[0].shape[-1] == 4096 and sd3[1]["pooled_output"].shape[-1] == 2048
    flux = tiny("flux").positive[0]
    assert flux[0].shape[-1] == 4096 and flux[1]["pooled_output"].shape[-1] == 768 and flux[1]["guidance"] == 3.5


def test_model_kinds(tiny):
    import comfy.model_base as mb

    assert tiny("sd15").patcher.model.model_type == mb.ModelType.EPS
    assert tiny("sdxl").patcher.model.model_type == mb.ModelType.EPS
    assert tiny("sd3").patcher.model.model_type == mb.ModelType.FLOW
    assert tiny("flux").patcher.model.model_type == mb.ModelType.FLUX
    assert float(tiny("sd3").patcher.model.model_sampling.shift) == pytest.approx(3.0)


def test_pack_registers_nodes(pack):
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert key in pack.NODE_DISPLAY_NAME_MAPPINGS
        assert callable(getattr(cls, "INPUT_TYPES"))
        assert hasattr(cls, getattr(cls, "FUNCTION"))
        assert isinstance(cls.RETURN_TYPES, tuple)
        assert cls.CATEGORY.startswith("CoRe²")


def test_pack_imports_outside_comfyui():
    """A bare interpreter (no ComfyUI loaded) imports the pack and gets empty mappings, no CUDA probing."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', r'{ROOT / '__init__.py'}', submodule_search_locations=[r'{ROOT}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['p'] = m; spec.loader.exec_module(m)\n"
        "assert m.NODE_CLASS_MAPPINGS == {}\n"
        "import p.core2\n"
        "assert 'comfy' not in sys.modules, 'core2 must not import ComfyUI'\n"
        "print('clean')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env)
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout


def test_core2_never_imports_comfy():
    for f in (ROOT / "core2").rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                assert top not in {"comfy", "comfy_extras", "folder_paths", "nodes", "latent_preview", "server"}, f"{f}: imports {n}"


def test_packaging_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    import comfyui_core2.core2 as core2

    assert meta["project"]["version"] == core2.__version__
    assert (ROOT / "LICENSE").read_text().startswith("                    GNU GENERAL PUBLIC LICENSE")
    reqs = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert not any(r.lower().startswith(("torch", "torchvision", "torchaudio")) for r in reqs)
