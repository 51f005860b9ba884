"""Test harness: real ComfyUI code (a checkout or notcomfy), this pack loaded the way ComfyUI loads it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# The tiny test models are latency-bound: one thread is several times faster than two on a 2-core machine.
torch.set_num_threads(int(os.environ.get("CORE2_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from tools import comfy_env  # noqa: E402

COMFY = comfy_env.activate()
PACK_NAME = comfy_env.PACK_NAME
PACK = comfy_env.load_pack()


def pytest_report_header(config):
    return [f"ComfyUI: {COMFY.describe()}", f"full ComfyUI (nodes.py, server): {COMFY.full}"]


def pytest_configure(config):
    config.addinivalue_line("markers", "full_comfy: needs a full ComfyUI checkout (COMFYUI_DIR)")


def pytest_collection_modifyitems(config, items):
    if COMFY.full:
        return
    skip = pytest.mark.skip(reason="needs a full ComfyUI: the comfyui-0.3.75 flavour or COMFYUI_DIR")
    for item in items:
        if "full_comfy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy_install():
    return COMFY


@pytest.fixture(scope="session")
def pack():
    return PACK


@pytest.fixture
def comfy_folders(tmp_path, monkeypatch):
    """ComfyUI's output, input and models/core2 folders redirected into tmp_path: folder_paths where ComfyUI has it,
    else the pack's CORE2_HOME fallback. Yields tmp_path."""
    from comfyui_core2.nodes import paths

    for d in ("output", "input", "models/core2"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("CORE2_HOME", str(tmp_path))
    fp = paths.folder_paths
    if fp is None:
        yield tmp_path
        return
    old_out, old_in = fp.get_output_directory(), fp.get_input_directory()
    monkeypatch.setattr(fp, "models_dir", str(tmp_path / "models"))
    monkeypatch.setitem(fp.folder_names_and_paths, paths.FOLDER, ([str(tmp_path / "models" / "core2")], set(paths.EXTENSIONS)))
    if hasattr(fp, "filename_list_cache"):
        fp.filename_list_cache.clear()
    fp.set_output_directory(str(tmp_path / "output"))
    fp.set_input_directory(str(tmp_path / "input"))
    try:
        yield tmp_path
    finally:
        fp.set_output_directory(old_out)
        fp.set_input_directory(old_in)


_TINY = {}


def _tiny(family):
    from testkit import tiny_models

    if family not in _TINY:
        _TINY[family] = tiny_models.BUILDERS[family]()
    tm = _TINY[family]
    tm.reset_calls()
    return tm


@pytest.fixture(params=["sd15", "sdxl", "sd3", "flux"])
def tiny_any(request):
    return _tiny(request.param)


@pytest.fixture
def tiny_sd15():
    return _tiny("sd15")


@pytest.fixture
def tiny_sdxl():
    return _tiny("sdxl")


@pytest.fixture
def tiny_sd3():
    return _tiny("sd3")


@pytest.fixture
def tiny_flux():
    return _tiny("flux")


@pytest.fixture
def tiny():
    """tiny(family) -> TinyModel, built once per session."""
    return _tiny
