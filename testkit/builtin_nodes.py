"""Run a ComfyUI built-in node, V1 (FUNCTION) or V3 (execute -> NodeOutput), and get its outputs as a tuple."""


def run_node(cls, **inputs):
    if hasattr(cls, "FUNCTION"):
        return tuple(getattr(cls(), cls.FUNCTION)(**inputs))
    out = cls.execute(**inputs)
    return tuple(out.args)
