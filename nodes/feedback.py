"""Text on the nodes themselves, besides the console log.

* While a node runs: ComfyUI's progress text (PromptServer.instance.send_progress_text, ComfyUI 0.3.64 and later),
  which the frontend shows inside the node and keeps there after the run. Detected, never required: notcomfy and
  older cores have no server (or no such method), and then only the log and the UI text remain.
* When it ends: the node's UI text output, {"ui": {"text": [...]}, "result": ...} (kept in the history, shown by
  text-display extensions and API clients).

Feedback never stops a run: a failure to send is logged at debug level and ignored.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def _sender():
    """PromptServer.instance.send_progress_text of the running ComfyUI, or None. Looks only at an already imported
    server module: importing ComfyUI's server.py outside a running ComfyUI would start to build one."""
    mod = sys.modules.get("server")
    inst = getattr(getattr(mod, "PromptServer", None), "instance", None)
    fn = getattr(inst, "send_progress_text", None)
    return fn if callable(fn) else None


def _executing_node_id():
    """The id of the node ComfyUI is executing (newer cores keep it in an executing context), else None."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    ctx = get_executing_context()
    return getattr(ctx, "node_id", None) if ctx is not None else None


class NodeText:
    """Text shown on one node while it runs: show() sends at most every `interval` seconds unless final."""

    def __init__(self, node_id=None, interval: float = 0.5):
        self.node_id = node_id if node_id not in (None, "") else _executing_node_id()
        self.interval = interval
        self.last_text: str | None = None
        self._sent_at = -float("inf")

    def show(self, text: str, final: bool = False) -> None:
        self.last_text = text
        now = time.monotonic()
        if not final and now - self._sent_at < self.interval:
            return
        send = _sender()
        if send is None or self.node_id is None:
            return
        self._sent_at = now
        try:
            send(text, str(self.node_id))
        except Exception:  # noqa: BLE001 - feedback must never break a run
            log.debug("CoRe²: could not show text on node %s", self.node_id, exc_info=True)


def with_text(text: str, result: tuple, node_id=None) -> dict:
    """A node's return value with `text` as its UI text output, also shown on the node as its final progress text."""
    NodeText(node_id).show(text, final=True)
    return {"ui": {"text": [text]}, "result": result}


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
