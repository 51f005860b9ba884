"""Off-thread recording of CFG trajectories (plain torch + threading; never imports ComfyUI).

The sampling thread hands each model evaluation to `TrajectoryRecorder.record()`; that only enqueues tensor
references (no device→host copy, no host sync). A single writer thread copies them to the CPU, groups them
into runs (one sampling call) and, when a run ends, hands the finished trajectories (one per batch row) to a
sink, which writes them to disk.

Run boundaries come either from the caller (`begin_run` / `end_run`, e.g. from a sampler wrapper that sees the
whole sampling call) or, without them, from the σ sequence: a new run starts when σ goes up (or the σ schedule
object changes). Implicit runs are committed when the next run starts, on `flush()` and on `close()`.

Errors in the writer thread are kept and re-raised on the sampling thread at the next `record()`,
`end_run(wait=True)`, `flush()` or `close()`; a failing sink never blocks sampling (the queue keeps draining).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .schedule import StepMap

log = logging.getLogger(__name__)

_BIG = ("cond", "uncond", "x")


class RecorderError(RuntimeError):
    """The writer thread failed; the original exception is the __cause__."""


@dataclass
class Evaluation:
    """One model evaluation (a batch of B rows). Tensors may live on any device; they are not modified later."""

    sigma: torch.Tensor  # [B] (or scalar)
    cond: torch.Tensor  # [B, C, H, W] raw conditional output
    uncond: torch.Tensor  # [B, C, H, W] raw unconditional output
    cfg: float | torch.Tensor  # the CFG scale: a number or a per-row tensor [B]
    x: torch.Tensor | None = None  # [B, C, H, W] the noisy input x_t, when stored
    schedule: torch.Tensor | None = None  # the run's σ schedule when the sampler exposes it
    context: dict | None = None  # opaque data for the sink; the first evaluation's context of a run is kept


@dataclass
class Trajectory:
    """One batch row of one run, on the CPU: cond/uncond [S,C,H,W], sigma/cfg [S] fp32, step [S] int64, x."""

    batch_index: int
    tensors: dict


@dataclass
class CompletedRun:
    meta: dict  # from begin_run (empty for implicit runs)
    context: dict  # the context of the run's first evaluation
    schedule: list | None  # σ schedule (floats) if known
    trajectories: list  # [Trajectory]
    evaluations: int


@dataclass
class _Run:
    meta: dict
    explicit: bool
    context: dict | None = None
    schedule: list | None = None
    schedule_ref: object = None
    last_sigma: float | None = None
    rows: dict = field(default_factory=dict)  # key -> list of per-eval CPU tensors [B, ...]
    evaluations: int = 0


def step_index(schedule: list | None, sigma: float, evaluation: int) -> int:
    """Index of the schedule step an evaluation at σ belongs to (schedule.StepMap.index: the last step whose upper
    σ is ≥ σ, so midpoint evaluations of 2nd-order samplers count to the step they start from). Without a schedule:
    the evaluation's position in the run."""
    if not schedule:
        return evaluation
    if len(schedule) < 2:
        return 0
    return StepMap(schedule, 0).index(sigma)


def _as_rows(v, batch: int) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
    return t.expand(batch).clone() if t.numel() == 1 else t


class TrajectoryRecorder:
    """Bounded-queue recorder. `sink(CompletedRun)` runs on the writer thread."""

    def __init__(self, sink: Callable[[CompletedRun], None], max_pending: int = 64, name: str = "core2-recorder"):
        self._sink = sink
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(max_pending)))
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.stats = {"evaluations": 0, "runs": 0, "trajectories": 0, "put_wait_s": 0.0, "dropped_runs": 0}
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # --- sampling-thread side ------------------------------------------------------------------------------
    def _raise_pending(self) -> None:
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise RecorderError(f"CoRe²: recording failed: {err}") from err

    def _put(self, msg) -> None:
        if self._closed:
            raise RecorderError("CoRe²: this recorder is closed.")
        t0 = time.perf_counter()
        while True:
            try:
                self._q.put(msg, timeout=0.5)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    raise RecorderError("CoRe²: the recording thread stopped unexpectedly.")
        self.stats["put_wait_s"] += time.perf_counter() - t0

    def begin_run(self, meta: dict | None = None) -> None:
        self._raise_pending()
        self._put(("begin", dict(meta or {})))

    def record(self, ev: Evaluation) -> None:
        self._raise_pending()
        self._put(("eval", ev))

    def end_run(self, wait: bool = True) -> None:
        """Commit the open run (explicit or implicit). With wait, block until it is on disk and re-raise errors."""
        done = threading.Event() if wait else None
        self._put(("end", done))
        if wait:
            self._wait(done)
            self._raise_pending()

    def abort_run(self) -> None:
        """Discard the open run (sampling failed or was cancelled): nothing of it is written."""
        if not self._closed:
            self._put(("abort", None))

    def flush(self) -> None:
        """Commit any open run, wait until everything queued is written, re-raise errors."""
        done = threading.Event()
        self._put(("end", done))
        self._wait(done)
        self._raise_pending()

    def _wait(self, ev: threading.Event) -> None:
        while not ev.wait(0.5):
            if not self._thread.is_alive():
                raise RecorderError("CoRe²: the recording thread stopped unexpectedly.")

    def close(self, raise_errors: bool = True) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._q.put(("stop", None))
            self._thread.join(timeout=60)
        if raise_errors:
            self._raise_pending()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- writer thread -------------------------------------------------------------------------------------
    def _work(self) -> None:
        run: _Run | None = None
        while True:
            kind, payload = self._q.get()
            try:
                if kind == "stop":
                    return
                if kind == "begin":
                    if run is not None:
                        self._commit(run)
                    run = _Run(meta=payload, explicit=True)
                elif kind == "eval":
                    if self._error is not None:
                        continue  # keep draining; the error is raised on the sampling thread
                    run = self._add(run, payload)
                elif kind == "end":
                    try:
                        if run is not None and self._error is None:
                            self._commit(run)
                    except BaseException as e:  # noqa: BLE001 - stored before the waiter wakes up
                        self._fail(e)
                    run = None
                    if payload is not None:
                        payload.set()
                elif kind == "abort":
                    if run is not None:
                        self.stats["dropped_runs"] += 1
                    run = None
            except BaseException as e:  # noqa: BLE001 - surfaced on the sampling thread
                self._fail(e)
                run = None
                if kind == "end" and payload is not None:
                    payload.set()

    def _fail(self, e: BaseException) -> None:
        log.error("CoRe² recorder: writer thread error: %s", e, exc_info=e)
        with self._lock:
            if self._error is None:
                self._error = e

    def _add(self, run: _Run | None, ev: Evaluation) -> _Run:
        sigma = ev.sigma.detach().to("cpu", torch.float32).reshape(-1)
        s0 = float(sigma[0])
        if run is None:
            run = _Run(meta={}, explicit=False)
        elif not run.explicit and run.evaluations and (
                s0 > run.last_sigma * (1 + 1e-5) + 1e-12 or (ev.schedule is not None and ev.schedule is not run.schedule_ref)):
            self._commit(run)  # σ went up: a new sampling call started
            run = _Run(meta={}, explicit=False)
        if run.evaluations == 0:
            run.context = ev.context or {}
            sched = ev.schedule if ev.schedule is not None else run.meta.get("schedule")
            if sched is not None:
                run.schedule_ref = ev.schedule
                run.schedule = [float(v) for v in torch.as_tensor(sched).detach().to("cpu", torch.float64).reshape(-1)]
        cond = ev.cond.detach().to("cpu")
        batch = cond.shape[0]
        if sigma.numel() == 1 and batch > 1:
            sigma = sigma.expand(batch).clone()
        rows = run.rows
        rows.setdefault("cond", []).append(cond)
        rows.setdefault("uncond", []).append(ev.uncond.detach().to("cpu"))
        if ev.x is not None:
            rows.setdefault("x", []).append(ev.x.detach().to("cpu"))
        rows.setdefault("sigma", []).append(sigma)
        rows.setdefault("cfg", []).append(_as_rows(ev.cfg.detach().to("cpu") if torch.is_tensor(ev.cfg) else ev.cfg, batch))
        rows.setdefault("step", []).append(torch.full((batch,), step_index(run.schedule, s0, run.evaluations), dtype=torch.int64))
        run.last_sigma = s0
        run.evaluations += 1
        self.stats["evaluations"] += 1
        return run

    def _commit(self, run: _Run) -> None:
        if run.evaluations == 0:
            return
        stacked = {k: torch.stack(v, dim=1) for k, v in run.rows.items()}  # [B, S, ...]
        batch = stacked["cond"].shape[0]
        trajs = [Trajectory(b, {k: v[b].contiguous() for k, v in stacked.items()}) for b in range(batch)]
        self._sink(CompletedRun(meta=run.meta, context=run.context or {}, schedule=run.schedule,
                                trajectories=trajs, evaluations=run.evaluations))
        self.stats["runs"] += 1
        self.stats["trajectories"] += len(trajs)


__all__ = ["TrajectoryRecorder", "Evaluation", "Trajectory", "CompletedRun", "RecorderError", "step_index"]
