"""Issue 20: `python -m core2.collect_remote` spreads one collection over several ComfyUI servers through their HTTP
API. Argument checks and the failover logic against a stand-in HTTP server (any flavour); with a full ComfyUI, two
real servers (own output folders): 2 shards, merged = one server's run bit for bit, also when one server is killed
with SIGKILL in the middle of its shard."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from conftest import COMFY, ROOT
from testkit import comfy_server

from comfyui_core2.core2 import collect_remote as cr

STEPS = 8  # per trajectory: a shard of ~6 trajectories takes about a second on the toy model


def toy_workflow(dataset: str, shard_index: int = 0, shard_count: int = 1) -> dict:
    """API format: the toy world's 6 prompts × 2 seeds into `dataset` (Collect Batch is an output node)."""
    return {
        "1": {"class_type": "CoRe2ToyModelLoader", "inputs": {"toy_model": "toy_t2i.safetensors"}},
        "2": {"class_type": "CoRe2ToyPromptList", "inputs": {"count": 6, "seed": 0, "world": "shapes"}},
        "3": {"class_type": "CoRe2CollectBatch", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "prompts": ["2", 0], "prompts_file": "(none)", "negative_prompt": "",
            "seeds_per_prompt": 2, "seed": 0, "steps": STEPS, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "width": 128, "height": 128, "dataset_name": dataset, "store_x": True, "batch_size": 1,
            "shard_index": shard_index, "shard_count": shard_count}},
    }


# ---------------------------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("bad", ["http://127.0.0.1:8188", "127.0.0.1", "127.0.0.1:8188/prompt", "user@host:8188",
                                 "host:0", "host:70000", "host:80x", "", "a b:80", "-host:80", "127.0.0.1:8188,",
                                 "127.0.0.1:8188?x=1", "host:8188#f"])
def test_bad_server_strings_are_refused(bad):
    with pytest.raises(ValueError, match="not host:port"):
        cr.parse_servers(bad)


def test_good_server_strings():
    assert cr.parse_servers("127.0.0.1:8188, gpu-2.lan:08189,[::1]:80") == ["127.0.0.1:8188", "gpu-2.lan:8189", "[::1]:80"]
    with pytest.raises(ValueError, match="named twice"):
        cr.parse_servers("a:1,a:1")


def test_workflow_needs_exactly_one_collect_node(tmp_path):
    wf = toy_workflow("d")
    assert cr.find_collect_node(wf) == "3"
    one = cr.shard_workflow(wf, "3", 1, 4)
    assert one["3"]["inputs"]["shard_index"] == 1 and one["3"]["inputs"]["shard_count"] == 4
    assert wf["3"]["inputs"]["shard_count"] == 1  # the original is left alone
    none = {k: v for k, v in wf.items() if k != "3"}
    with pytest.raises(ValueError, match="exactly one CoRe² Collect Batch.*found 0"):
        cr.find_collect_node(none)
    with pytest.raises(ValueError, match=r"found 2 \(nodes 3, 4\)"):
        cr.find_collect_node({**wf, "4": wf["3"]})
    with pytest.raises(ValueError, match="Export \\(API\\)"):
        cr.find_collect_node({"nodes": [], "links": []})  # the UI format
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(none))
    r = subprocess.run([sys.executable, "-m", "core2.collect_remote", "--servers", "127.0.0.1:1", "--workflow", str(path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "exactly one CoRe² Collect Batch" in r.stderr, r.stderr
    path.write_text(json.dumps(wf))
    r = subprocess.run([sys.executable, "-m", "core2.collect_remote", "--servers", "http://x:1", "--workflow", str(path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not host:port" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------------------------
# failover logic against stand-in servers


class FakeComfy:
    """Just enough of ComfyUI's API: /prompt queues, /history reports the prompt done after `polls` checks, with an
    execution error when fail(shard) says so; forget=True: a restarted server, which knows none of its prompts."""

    def __init__(self, fail=lambda shard: False, polls: int = 1, forget: bool = False):
        self.fail, self.polls, self.prompts, self.checks, self.forget = fail, polls, {}, {}, forget
        self.cancelled = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj, code=200):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/prompt":  # /queue delete, /interrupt
                    outer.cancelled.append((self.path, body))
                    return self._send({})
                pid = f"p{len(outer.prompts)}"
                outer.prompts[pid] = body["prompt"]["3"]["inputs"]["shard_index"]
                self._send({"prompt_id": pid, "number": 0, "node_errors": {}})

            def do_GET(self):
                if self.path == "/queue":
                    running = [] if outer.forget else [[0, p] for p in outer.prompts]
                    return self._send({"queue_running": running, "queue_pending": []})
                if outer.forget:
                    return self._send({})
                pid = self.path.rsplit("/", 1)[-1]
                outer.checks[pid] = outer.checks.get(pid, 0) + 1
                if outer.checks[pid] <= outer.polls:
                    return self._send({})
                bad = outer.fail(outer.prompts[pid])
                status = {"status_str": "error" if bad else "success", "completed": not bad, "messages": [
                    ["execution_error", {"node_id": "3", "node_type": "CoRe2CollectBatch", "exception_message": "disk full"}]
                ] if bad else []}
                self._send({pid: {"status": status, "outputs": {"3": {"text": ["3 new, 0 already present in d"]}}}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _drive(servers, shards, **kw):
    import io

    out = io.StringIO()
    d = cr.Driver(servers, toy_workflow("d"), "3", shards, poll_s=0.01, timeout=5, retries=2, out=out, **kw)
    ok = d.run()
    return ok, d, out.getvalue() + d.summary(ok)


def test_failed_shards_move_to_other_servers():
    """An execution error moves the shard to another server; a server that refuses connections is dropped; every
    shard ends done somewhere."""
    a, b = FakeComfy(fail=lambda shard: shard == 1), FakeComfy()
    dead = f"127.0.0.1:{comfy_server.free_port()}"
    try:
        ok, d, text = _drive([dead, a.host, b.host], 3)
    finally:
        a.close(), b.close()
    assert ok, text
    assert sorted(d.done) == [0, 1, 2] and d.done[1][0] == b.host and dead in d.gone
    assert f"failed on {dead}: unreachable" in text
    assert f"shard 1/3 failed on {a.host}: execution_error in node 3 (CoRe2CollectBatch): disk full" in text
    assert f"shard 1/3 submitted to {b.host} (attempt 2, resubmitted)" in text
    assert "3 of 3 shards done" in text and "done on" in text and "3 new, 0 already present" in text


def test_a_prompt_the_server_forgot_is_run_elsewhere():
    """A server restarted mid-run (up again, but its history and queue lack the prompt): the shard moves on."""
    a, b = FakeComfy(forget=True), FakeComfy()
    try:
        ok, d, text = _drive([a.host, b.host], 2)
    finally:
        a.close(), b.close()
    assert ok and d.done[0][0] == d.done[1][0] == b.host, text
    assert f"shard 0/2 failed on {a.host}: the server no longer knows prompt p0 (restarted?)" in text


def test_a_shard_past_shard_timeout_is_cancelled_and_moved():
    slow, quick = FakeComfy(polls=10**9), FakeComfy()
    try:
        ok, d, text = _drive([slow.host, quick.host], 2, shard_timeout=0.3)
    finally:
        slow.close(), quick.close()
    assert ok and d.done[0][0] == quick.host, text
    assert f"shard 0/2 failed on {slow.host}: not done after --shard-timeout 0.3 s; cancelled there" in text
    assert ("/queue", {"delete": ["p0"]}) in slow.cancelled and ("/interrupt", {"prompt_id": "p0"}) in slow.cancelled


def test_no_server_left_exits_nonzero_and_names_the_unfinished_shards(tmp_path):
    a = FakeComfy(fail=lambda shard: True)
    try:
        ok, d, text = _drive([a.host], 2)
    finally:
        a.close()
    assert not ok and "unfinished shards: 0, 1" in text and "run the same command again" in text
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(toy_workflow("d")))
    dead = ",".join(f"127.0.0.1:{comfy_server.free_port()}" for _ in range(2))
    r = subprocess.run([sys.executable, "-m", "core2.collect_remote", "--servers", dead, "--workflow", str(path),
                        "--poll", "0.05"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unfinished shards: 0, 1" in r.stdout and "unreachable" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------------------------
# two real ComfyUI servers


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two ComfyUI servers, each with its own base (and output) folder, started side by side."""
    started = [comfy_server.Server(COMFY.path, ROOT, tmp_path_factory.mktemp(f"comfy{i}")) for i in range(2)]
    try:
        for s in started:
            s.wait()
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def reference(servers):
    """What one server collects with shard_count 1."""
    servers[0].run_prompt(toy_workflow("whole"))
    return _dataset(servers[0], "whole")


def _dataset(server, name):
    return server.base / "output" / "core2_datasets" / name


def _host(server) -> str:
    return f"127.0.0.1:{server.port}"


def _driver(servers, workflow_path, log_path):
    return subprocess.Popen([sys.executable, "-m", "core2.collect_remote", "--servers", ",".join(map(_host, servers)),
                             "--workflow", str(workflow_path), "--poll", "0.2", "--timeout", "20"], cwd=ROOT,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def _assert_merge_is(reference, sources, dest):
    """Merged sources = the reference: the same (prompt, seed) items, equal tensors."""
    from safetensors.torch import load_file

    from comfyui_core2.core2 import dataset as ds, dataset_merge

    dataset_merge.merge(dest, [s for s in sources if (s / ds.MANIFEST).is_file()])
    a, b = ds.DatasetReader(reference), ds.DatasetReader(dest)
    assert sorted(it["key"] for it in b.items) == sorted(it["key"] for it in a.items)
    assert len(a.items) == 12
    for it in a.items:
        ta, tb = load_file(str(reference / it["shard"])), load_file(str(dest / it["shard"]))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), it["key"]


@pytest.mark.full_comfy
def test_two_servers_two_shards_merge_into_one_servers_run(servers, reference, tmp_path):
    wf = tmp_path / "collect_api.json"
    wf.write_text(json.dumps(toy_workflow("remote")))
    log = tmp_path / "driver.log"
    proc = _driver(servers, wf, log)
    assert proc.wait(timeout=120) == 0, log.read_text()
    text = log.read_text()
    assert "2 of 2 shards done" in text and "failed" not in text, text
    for i, s in enumerate(servers):  # shard i went to server i, which wrote it into its own output folder
        assert f"shard {i}/2 submitted to {_host(s)}" in text and f"shard {i}/2 done on {_host(s)}" in text, text
    parts = [_dataset(s, "remote") for s in servers]
    from comfyui_core2.core2 import dataset as ds

    sizes = [len(ds.DatasetReader(p).items) for p in parts]
    assert sum(sizes) == 12 and min(sizes) > 0, sizes
    _assert_merge_is(reference, parts, tmp_path / "merged")


@pytest.mark.full_comfy
def test_a_server_killed_mid_shard_is_replaced(servers, reference, tmp_path):
    """SIGKILL on the server running shard 0 once its first trajectory landed: the other server runs shard 0 again
    (into its own folder); the driver still finishes with exit 0, and the merge (the victim's partial dataset, torn
    log line and all, plus the survivor's) is exactly one server's run. Runs last: it kills servers[1]."""
    victim, survivor = servers[1], servers[0]
    wf = tmp_path / "collect_api.json"
    wf.write_text(json.dumps(toy_workflow("failover")))
    log = tmp_path / "driver.log"
    items = _dataset(victim, "failover") / "items.jsonl"
    proc = _driver([victim, survivor], wf, log)  # shard 0 goes to the victim
    end = time.time() + 90
    while time.time() < end and not (items.is_file() and items.stat().st_size > 0):
        assert proc.poll() is None, log.read_text()
        time.sleep(0.01)
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(timeout=30)
    landed = len(items.read_text().splitlines())
    assert proc.wait(timeout=120) == 0, log.read_text()
    text = log.read_text()
    assert landed >= 1 and f"shard 0/2 failed on {_host(victim)}" in text, (landed, text)
    assert f"shard 0/2 submitted to {_host(survivor)} (attempt 2, resubmitted)" in text, text
    assert "2 of 2 shards done" in text and f"{_host(survivor)}: shards 0, 1" in text and "gone:" in text, text
    _assert_merge_is(reference, [_dataset(victim, "failover"), _dataset(survivor, "failover")], tmp_path / "merged")
