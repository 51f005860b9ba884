"""comfyui-core2: CoRe² (Collect, Reflect, Refine; arXiv 2503.09662) for ComfyUI.

Nodes are registered only when ComfyUI's core is already loaded (it is, by the time ComfyUI imports custom
nodes), so this package imports cleanly anywhere else without touching torch devices.
"""
import sys

if "comfy.model_management" in sys.modules:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported outside ComfyUI (packaging tools, plain python)
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

# web/template_order.js: the frontend lists workflows/ in the template browser in file-name order (01 -> 10)
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
