"""CoRe² in plain torch: guidance math, weak models, dataset format, training. Never imports ComfyUI."""
__version__ = "0.1.0"
