"""ComfyUI node adapters. Each module exports NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS; merged here."""
import importlib
import logging

_MODULES = ["collect", "collect_batch", "reflect", "refine", "apply", "compare", "presets", "toy"]  # node modules, in menu order

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _name in _MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)

logging.getLogger(__name__).debug("comfyui-core2: %d nodes", len(NODE_CLASS_MAPPINGS))
