"""A real ComfyUI server for tests (full ComfyUI only): this pack in <tmp>/custom_nodes, loopback, CPU; plus the
UI-format -> API-format conversion that the frontend does when you press Queue."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_NAMES = ("seed", "noise_seed")
FRONTEND_ONLY = ("Note", "MarkdownNote")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, comfy_dir: Path, pack_dir: Path, base: Path, pack_folder: str = "comfyui-core2"):
        self.base = Path(base)
        custom = self.base / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        link = custom / pack_folder
        if not link.exists():
            link.symlink_to(pack_dir, target_is_directory=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                                      "--base-directory", str(self.base), "--disable-auto-launch"], cwd=comfy_dir,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self._env())

    @staticmethod
    def _env() -> dict:
        """The toy models are latency-bound: one torch thread is faster than several on a small shared CPU."""
        threads = os.environ.get("CORE2_TEST_THREADS", "1")
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 150) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("ComfyUI exited while starting:\n" + self.log()[-4000:])
            try:
                self.get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError("ComfyUI did not start in time:\n" + self.log()[-4000:])

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def post(self, path: str, body: dict, timeout: float = 60):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def run_prompt(self, api: dict, timeout: float = 240) -> dict:
        """POST /prompt and poll /history until the prompt is done; returns its history entry."""
        status, resp = self.post("/prompt", {"prompt": api, "client_id": "core2-tests"})
        if status != 200:
            raise AssertionError(f"/prompt refused the workflow ({status}): {json.dumps(resp)[:3000]}")
        if resp.get("node_errors"):  # accepted in part: the nodes with errors (and what depends on them) do not run
            raise AssertionError(f"/prompt found errors in the workflow: {json.dumps(resp['node_errors'])[:3000]}")
        pid = resp["prompt_id"]
        end = time.time() + timeout
        while time.time() < end:
            h = self.get(f"/history/{pid}")
            if pid in h and (h[pid].get("status") or {}).get("completed") is not None:
                if h[pid]["status"].get("status_str") != "success" or not h[pid]["status"].get("completed"):
                    raise AssertionError("prompt failed: " + json.dumps(h[pid]["status"])[:4000] + "\n" + self.log()[-4000:])
                return h[pid]
            if pid in h and h[pid].get("outputs") and "status" not in h[pid]:
                return h[pid]
            if self.proc.poll() is not None:
                raise RuntimeError("ComfyUI exited:\n" + self.log()[-4000:])
            time.sleep(0.5)
        self.post("/interrupt", {})
        raise TimeoutError("prompt did not finish in time:\n" + self.log()[-4000:])

    @classmethod
    def running(cls, comfy_dir: Path, pack_dir: Path, base: Path):
        """A started server for a `with` block (or a fixture's yield); always stopped afterwards."""
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            srv = cls(comfy_dir, pack_dir, base)
            try:
                srv.wait()
                yield srv
            finally:
                srv.stop()

        return ctx()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def input_specs(info: dict) -> list:
    """[(name, spec, optional)] of a node in /object_info, in the order the frontend creates its inputs."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            out.append((name, info["input"][section][name], section == "optional"))
    return out


def is_widget(spec) -> bool:
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return isinstance(t, list) or (t in WIDGET_TYPES and not opts.get("forceInput"))


def has_control(name, spec) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    # the frontend's rule: control_after_generate ?? (name is seed / noise_seed); False: no control widget
    return spec[0] == "INT" and bool(opts.get("control_after_generate", name in CONTROL_NAMES))


def widget_map(node: dict, info: dict) -> dict:
    """{input name: value} from a UI node's widgets_values (control_after_generate values skipped)."""
    values = list(node.get("widgets_values") or [])
    out, k = {}, 0
    for name, spec, _opt in input_specs(info):
        if not is_widget(spec):
            continue
        if k >= len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): widgets_values has no value for {name!r}")
        out[name] = values[k]
        k += 2 if has_control(name, spec) else 1
    if k != len(values):
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widgets_values, expected {k}")
    return out


def ui_to_api(wf: dict, object_info: dict) -> dict:
    """The API-format prompt for a UI-format workflow (what the frontend sends on Queue)."""
    links = {l[0]: l for l in wf["links"]}
    api = {}
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        inputs = widget_map(node, info)
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None:
                l = links[inp["link"]]
                inputs[inp["name"]] = [str(l[1]), l[2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def with_widgets(api: dict, overrides: dict) -> dict:
    """api with widget values replaced per node type ({class_type: {input: value}}, e.g. make_workflows.QUICK_RUN);
    every named input must exist on the nodes of that type, so a renamed input fails loudly."""
    out = {}
    for nid, node in api.items():
        new = overrides.get(node["class_type"], {})
        missing = sorted(set(new) - set(node["inputs"]))
        if missing:
            raise KeyError(f"{node['class_type']} has no input {missing}")
        out[nid] = {**node, "inputs": {**node["inputs"], **new}}
    return out
