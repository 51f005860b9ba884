"""Spread one CoRe² collection over several ComfyUI servers through ComfyUI's own HTTP API.

    python -m core2.collect_remote --servers 127.0.0.1:8188,127.0.0.1:8189 --workflow collect_api.json

The workflow is in ComfyUI's API format (what POST /prompt takes; in ComfyUI: Workflow → Export (API)) and holds
exactly one CoRe² Collect Batch node. Shard i of N gets that node's shard_index = i and shard_count = N and is queued
on a free server (POST /prompt); the driver follows it by polling /history/<prompt_id> (and /queue, to notice a
prompt a restarted server forgot). A shard whose server fails (refused or reset connections, timeouts, an execution
error in /history, the server gone mid-run) is queued again on another live server: the dataset is resumable, so a
rerun collects only what is missing. Done when every shard succeeded somewhere; when no server is left, exits 1 and
names the unfinished shards (running the same command again resumes them).

Each server writes where its ComfyUI writes: one shared output folder (one dataset), or a folder of its own, joined
afterwards with `python -m core2.dataset_merge DEST SRC1 SRC2 ...`. Standard library only, no ComfyUI import.
"""
from __future__ import annotations

import argparse
import copy
import http.client
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

NODE_TYPE = "CoRe2CollectBatch"
MAX_SHARDS = 4096  # the node's shard_count maximum
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])$")


class RemoteError(RuntimeError):
    """A shard failed on one server; gone=True when the server itself is unreachable (not used again)."""

    def __init__(self, message: str, gone: bool = False):
        super().__init__(message)
        self.gone = gone


# ---------------------------------------------------------------------------------------------------------------
# arguments


def parse_servers(text: str) -> list[str]:
    """'host:port,host:port' -> ['host:port', ...]; anything but host:port (a scheme, a path, a user, no port) is refused."""
    out = []
    for raw in (text or "").split(","):
        s = raw.strip()
        host, sep, port = s.rpartition(":")
        if not sep or not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"--servers: {s!r} is not host:port (e.g. 127.0.0.1:8188 or gpu2:8188); give the "
                             "servers as host:port separated by commas, without http://, paths or user names.")
        if s in out:
            raise ValueError(f"--servers: {s} is named twice.")
        out.append(f"{host}:{int(port)}")
    return out


def find_collect_node(workflow) -> str:
    """The id of the workflow's one CoRe2CollectBatch node; refuses other formats and counts."""
    if not isinstance(workflow, dict) or ("nodes" in workflow and "links" in workflow):
        raise ValueError("--workflow: this is not ComfyUI's API format (the UI format has 'nodes' and 'links'); in "
                         "ComfyUI use Workflow → Export (API) and give that file.")
    bad = [k for k, v in workflow.items() if not (isinstance(v, dict) and "class_type" in v and "inputs" in v)]
    if bad:
        raise ValueError(f"--workflow: entries {bad[:5]} are not API-format nodes (class_type, inputs); export the "
                         "workflow with Workflow → Export (API).")
    ids = [k for k, v in workflow.items() if v["class_type"] == NODE_TYPE]
    if len(ids) != 1:
        raise ValueError(f"--workflow: needs exactly one CoRe² Collect Batch ({NODE_TYPE}) node, found {len(ids)}"
                         + (f" (nodes {', '.join(ids)})" if ids else "") + "; keep the one to spread over the servers.")
    return ids[0]


def shard_workflow(workflow: dict, node_id: str, index: int, count: int) -> dict:
    """A copy of the workflow whose collect node collects shard index of count."""
    wf = copy.deepcopy(workflow)
    wf[node_id]["inputs"].update(shard_index=int(index), shard_count=int(count))
    return wf


def load_workflow(path: Path) -> tuple[dict, str]:
    try:
        workflow = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"--workflow: cannot read {path} as JSON ({e}).") from e
    return workflow, find_collect_node(workflow)


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI's HTTP API


def _call(host: str, path: str, body: dict | None, timeout: float):
    """GET (body None) or POST JSON to http://host/path; returns (status, parsed JSON). Network trouble: RemoteError(gone)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{host}{path}", data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise RemoteError(f"unreachable ({reason})", gone=True) from e


def submit(host: str, workflow: dict, client_id: str, timeout: float) -> str:
    """POST /prompt; returns the prompt id. A refused workflow: RemoteError (the server stays usable)."""
    status, resp = _call(host, "/prompt", {"prompt": workflow, "client_id": client_id}, timeout)
    if status != 200 or not isinstance(resp, dict) or "prompt_id" not in resp:
        raise RemoteError(f"the server refused the workflow (HTTP {status}): {json.dumps(resp)[:600]}")
    if resp.get("node_errors"):
        raise RemoteError(f"the server found errors in the workflow: {json.dumps(resp['node_errors'])[:600]}")
    return resp["prompt_id"]


def _error_text(status: dict) -> str:
    for kind, msg in status.get("messages") or []:
        if kind in ("execution_error", "execution_interrupted") and isinstance(msg, dict):
            what = msg.get("exception_message") or "interrupted"
            return f"{kind} in node {msg.get('node_id')} ({msg.get('node_type')}): {str(what).strip()[:600]}"
    return f"status {status.get('status_str')!r}"


def _in_queue(host: str, prompt_id: str, timeout: float) -> bool:
    _, q = _call(host, "/queue", None, timeout)
    entries = (q or {}).get("queue_running", []) + (q or {}).get("queue_pending", [])
    return any(len(e) > 1 and e[1] == prompt_id for e in entries)


def cancel(host: str, prompt_id: str, timeout: float) -> None:
    """Best effort: drop the prompt from the queue, or interrupt it when it is the one running (by prompt id; older
    ComfyUIs interrupt whatever runs, which was checked to be this prompt)."""
    try:
        _call(host, "/queue", {"delete": [prompt_id]}, timeout)
        _, q = _call(host, "/queue", None, timeout)
        if any(len(e) > 1 and e[1] == prompt_id for e in (q or {}).get("queue_running", [])):
            _call(host, "/interrupt", {"prompt_id": prompt_id}, timeout)
    except RemoteError:
        pass


def poll(host: str, prompt_id: str, timeout: float, collect_node: str):
    """None while the prompt waits or runs; the collect node's text when it succeeded; RemoteError when it failed
    or the server no longer knows it (restarted)."""
    for attempt in range(2):
        _, hist = _call(host, f"/history/{prompt_id}", None, timeout)
        entry = (hist or {}).get(prompt_id)
        if entry is not None:
            status = entry.get("status") or {}
            if status.get("completed") is None and not entry.get("outputs"):
                return None
            if status and (status.get("status_str") != "success" or not status.get("completed")):
                raise RemoteError(_error_text(status))
            texts = (entry.get("outputs") or {}).get(collect_node, {}).get("text") or ["done"]
            return str(texts[0])
        if attempt == 0 and _in_queue(host, prompt_id, timeout):
            return None
    raise RemoteError(f"the server no longer knows prompt {prompt_id} (restarted?)")


# ---------------------------------------------------------------------------------------------------------------
# the driver


@dataclass
class Run:
    shard: int
    host: str
    prompt_id: str
    started: float
    misses: int = 0  # consecutive polls that could not reach the server


@dataclass
class Driver:
    servers: list
    workflow: dict
    node_id: str
    shards: int
    poll_s: float = 1.0
    timeout: float = 30.0
    retries: int = 3  # unanswered polls in a row before a server counts as gone
    shard_timeout: float = 0.0  # seconds from submission after which a shard is cancelled there and moved (0: never)
    out: object = sys.stdout
    t0: float = field(default_factory=time.monotonic)
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self):
        self.pending = list(range(self.shards))
        self.running: dict[str, Run] = {}  # host -> its run
        self.gone: dict[str, str] = {}  # host -> why
        self.refused: dict[int, set] = {i: set() for i in range(self.shards)}  # shard -> hosts it failed on
        self.done: dict[int, tuple[str, float]] = {}  # shard -> (host, seconds)
        self.busy_s = {h: 0.0 for h in self.servers}
        self.attempts = {i: 0 for i in range(self.shards)}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", file=self.out, flush=True)

    def live(self) -> list:
        return [h for h in self.servers if h not in self.gone]

    def _tag(self, shard: int) -> str:
        return f"shard {shard}/{self.shards}"

    def _pick(self, shard: int, idle: list):
        for host in idle:
            if host not in self.refused[shard]:
                return host
        return None

    def assign(self) -> None:
        """Queue pending shards on idle live servers, one shard per server at a time."""
        for shard in list(self.pending):
            idle = [h for h in self.live() if h not in self.running]
            host = self._pick(shard, idle)
            if host is None:
                continue
            self.attempts[shard] += 1
            try:
                pid = submit(host, shard_workflow(self.workflow, self.node_id, shard, self.shards), self.client_id,
                             self.timeout)
            except RemoteError as e:
                self.fail(shard, host, e)
                continue
            self.pending.remove(shard)
            self.running[host] = Run(shard, host, pid, time.monotonic())
            again = f" (attempt {self.attempts[shard]}, resubmitted)" if self.attempts[shard] > 1 else ""
            self.say(f"{self._tag(shard)} submitted to {host}{again}")

    def fail(self, shard: int, host: str, err: RemoteError) -> None:
        """Shard failed on host: back to the pending list; the host is dropped when gone, else avoided for it."""
        self.running.pop(host, None)
        if shard not in self.pending:
            self.pending.append(shard)
        if err.gone:
            self.gone[host] = str(err)
        else:
            self.refused[shard].add(host)
        self.say(f"{self._tag(shard)} failed on {host}: {err}")

    def check(self, run: Run) -> None:
        try:
            text = poll(run.host, run.prompt_id, self.timeout, self.node_id)
        except RemoteError as e:
            run.misses += 1
            if e.gone and run.misses < self.retries:
                return
            self.fail(run.shard, run.host, e)
            return
        run.misses = 0
        if text is None and self.shard_timeout and time.monotonic() - run.started > self.shard_timeout:
            cancel(run.host, run.prompt_id, self.timeout)
            self.fail(run.shard, run.host, RemoteError(f"not done after --shard-timeout {self.shard_timeout:g} s; "
                                                       "cancelled there"))
        elif text is not None:
            secs = time.monotonic() - run.started
            del self.running[run.host]
            self.done[run.shard] = (run.host, secs)
            self.busy_s[run.host] += secs
            self.say(f"{self._tag(run.shard)} done on {run.host} in {secs:.1f} s: {text}")

    def run(self) -> bool:
        """Until every shard is done (True) or none of the remaining can run anywhere (False): after assign(),
        nothing running means every live server is idle and has already failed each pending shard (or none is left)."""
        while len(self.done) < self.shards:
            self.assign()
            if not self.running:
                return False
            time.sleep(self.poll_s)
            for run in list(self.running.values()):
                self.check(run)
        return True

    def summary(self, ok: bool) -> str:
        total = time.monotonic() - self.t0
        lines = [f"{len(self.done)} of {self.shards} shards done in {total:.1f} s"]
        for host in self.servers:
            mine = sorted(s for s, (h, _) in self.done.items() if h == host)
            gone = f"  (gone: {self.gone[host]})" if host in self.gone else ""
            lines.append(f"  {host}: shards {', '.join(map(str, mine)) or 'none'}, {self.busy_s[host]:.1f} s{gone}")
        if not ok:
            left = sorted(set(range(self.shards)) - set(self.done))
            lines.append(f"unfinished shards: {', '.join(map(str, left))}: no live server could take them (see the "
                         "failures above). Bring the servers back or fix what the failures say, then run the same "
                         "command again: finished trajectories are kept, only the missing ones are collected.")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m core2.collect_remote", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", required=True, help="host:port of each ComfyUI, separated by commas")
    ap.add_argument("--workflow", required=True, type=Path, help="the collection workflow in API format (JSON)")
    ap.add_argument("--shards", type=int, default=None, help="how many shards (default: one per server)")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks (default 1)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one HTTP request may take (default 30)")
    ap.add_argument("--shard-timeout", type=float, default=0.0,
                    help="seconds after submission after which a shard is cancelled on its server and moved to "
                         "another (default 0: wait as long as it takes)")
    ap.add_argument("--retries", type=int, default=3,
                    help="unanswered checks in a row after which a server counts as gone (default 3)")
    args = ap.parse_args(argv)
    try:
        args.servers = parse_servers(args.servers)
        args.workflow, args.node_id = load_workflow(args.workflow)
    except ValueError as e:
        ap.error(str(e))
    args.shards = len(args.servers) if args.shards is None else args.shards
    if not 1 <= args.shards <= MAX_SHARDS:
        ap.error(f"--shards must be 1 … {MAX_SHARDS}.")
    if args.poll <= 0 or args.timeout <= 0 or args.retries < 1 or args.shard_timeout < 0:
        ap.error("--poll and --timeout must be > 0, --shard-timeout ≥ 0 and --retries ≥ 1.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    driver = Driver(args.servers, args.workflow, args.node_id, args.shards, poll_s=args.poll, timeout=args.timeout,
                    retries=args.retries, shard_timeout=args.shard_timeout)
    driver.say(f"{args.shards} shards of node {args.node_id} over {len(args.servers)} servers: {', '.join(args.servers)}")
    try:
        ok = driver.run()
    except KeyboardInterrupt:
        ok = False
        driver.say("stopped by the user; the servers keep running what they have queued")
    print(driver.summary(ok), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
