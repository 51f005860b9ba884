"""Which schedule step a model evaluation belongs to, and whether that step runs slow or fast.

Samplers evaluate the model at σ values of the schedule and, for second-order and ancestral samplers, in between;
σ alone cannot tell the steps apart (heun's second evaluation of step i sits at σ_{i+1}, where step i+1 starts;
heunpp2 looks ahead to σ_{i+2}; churn raises σ above σ_i). So StepTracker counts by the sampler's own progress:

1. the sampler's loop index: k-diffusion samplers (every ComfyUI sampler but uni_pc, dpm_fast and dpm_adaptive) run
   `for i in ...` over `sigmas`, and every evaluation made inside iteration i belongs to step i. It is read from the
   sampler's frame (the innermost caller with an int `i` and the run's `sigmas`), which needs no list of samplers;
2. otherwise, where the sampler calls back at the END of each of its steps (several evaluations before its first
   callback: dpm_adaptive), each evaluation takes the step of the first evaluation after the latest callback, so
   each of its own steps (dpm_adaptive: each attempted step) runs in one mode, that of the σ it starts from;
3. otherwise σ: StepMap.index. That is before the first callback, for samplers that never call back, and for those
   that call back right after a step's first evaluation (the k-diffusion habit: uni_pc, which evaluates only at
   schedule σ, so σ is exact; dpm_fast, whose own steps may then straddle the slow/fast boundary).

StepMap.index: an evaluation at σ belongs to step i when schedule[i] ≥ σ > schedule[i+1] (a small relative
tolerance absorbs float noise); exactly at a step boundary it belongs to the later step, i.e. to its noise level.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch


PLACEMENTS = ("auto", "first", "spread", "front")


def check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise ValueError(f"CoRe²: unknown slow-step placement {placement!r}; use one of {', '.join(PLACEMENTS)}.")
    return placement


def resolve_placement(placement: str, weak) -> str:
    """auto: front for weak models that build on the latest slow step's measured guidance (weak.remembers_guidance:
    the reuse fill-in, models trained with guidance memory), first for the others. Measured on both toy worlds
    (docs/method.md §2): with memory, spread is best on the shapes world but far worst on the scenes world (a flow
    model whose layout is decided in a few early steps), first the reverse; front has the smallest worst case of
    the three (0.014 behind first on scenes, 0.005 behind spread on shapes)."""
    if check_placement(placement) != "auto":
        return placement
    return "front" if getattr(weak, "remembers_guidance", False) else "first"


def slow_step_set(total: int, slow_steps: int, placement: str = "first") -> frozenset:
    """Which of `total` steps run slow. first: steps 0 … k−1 (the official CoRe²: guidance where the picture's layout
    is decided). spread: k steps evenly spaced from step 0 (0, total/k, 2·total/k, …), so that fast steps never
    run far from a measured CFG step (what the reuse fill-in and a weak model that drifts want). front: both, the
    first ⌈k/2⌉ steps, then the other ⌊k/2⌋ evenly spaced from the next step on (20 steps, 4 slow: 0, 1, 2, 11)."""
    k = max(0, min(int(slow_steps), int(total)))
    if check_placement(placement) == "auto":
        raise ValueError("CoRe²: resolve the 'auto' slow-step placement for the weak model first (resolve_placement).")
    if placement == "first":
        return frozenset(range(k))
    if placement == "front":
        head = (k + 1) // 2
        rest = k - head
        return frozenset(range(head)) | frozenset(head + (j * (total - head)) // rest for j in range(rest))
    return frozenset((j * total) // k for j in range(k))


class StepMap:
    def __init__(self, schedule: torch.Tensor, slow_steps: int, rtol: float = 1e-4, placement: str = "first"):
        s = torch.as_tensor(schedule, dtype=torch.float64).flatten().cpu()
        if s.numel() < 2:
            raise ValueError("a sampling schedule needs at least two σ values")
        self.schedule = s
        self.total = s.numel() - 1
        self.slow_steps = int(slow_steps)
        self.placement = placement
        self.slow = slow_step_set(self.total, self.slow_steps, placement)
        self.rtol = rtol

    def index(self, sigma) -> int:
        sig = float(torch.as_tensor(sigma).flatten()[0])
        tol = self.rtol * max(abs(sig), 1e-8)
        # the last step whose upper edge is ≥ σ; above the schedule (σ_hat with churn) is step 0
        above = (self.schedule[:-1] >= sig - tol).nonzero()
        return int(above[-1]) if above.numel() else 0

    def is_slow(self, step_index: int) -> bool:
        return step_index in self.slow

    def position(self, window) -> int:
        """Where a run's σ list (a KSamplerAdvanced window of the schedule) starts in the schedule."""
        w = torch.as_tensor(window, dtype=torch.float64).flatten().cpu()
        if w.numel() == 0:
            return 0
        diff = (self.schedule[:-1] - float(w[0])).abs()
        j = int(diff.argmin())
        return j if float(diff[j]) <= self.rtol * max(abs(float(w[0])), 1e-8) else self.index(w[0])


class StepTracker:
    """The schedule step of each model evaluation of one sampling run, by the sampler's own progress (module doc).

    start(window) when the run starts (from the frame that calls the sampler: frames above it are not searched);
    on_callback() from the sampler's per-step callback; step(σ) for each evaluation.
    """

    def __init__(self, step_map: StepMap):
        self.map = step_map
        self.source = "sigma"  # how the last step was found: "loop", "callback" or "sigma"

    def start(self, window, stop_frame=None) -> None:
        self.window = torch.as_tensor(window).detach().flatten().to("cpu", torch.float64)
        self.offset = self.map.position(self.window)
        self.stop_frame = stop_frame
        self.run_sigmas: list = []  # the σ tensors seen in sampler frames that hold this run's σ list
        self.evaluations = 0
        self.closing_callbacks: bool | None = None  # does the sampler call back at the end of its steps? (unknown)
        self.anchor: int | None = None

    def on_callback(self, *args, **kwargs) -> None:
        if self.closing_callbacks is None:
            self.closing_callbacks = self.evaluations > 1
        self.anchor = None

    def step(self, sigma) -> int:
        self.evaluations += 1
        i = self._loop_index()
        if i is not None:
            self.source = "loop"
            return min(self.offset + i, self.map.total - 1)
        by_sigma = self.map.index(sigma)
        if not self.closing_callbacks:
            self.source = "sigma"
            return by_sigma
        if self.anchor is None:
            self.anchor = by_sigma
        self.source = "callback"
        return self.anchor

    def _loop_index(self) -> int | None:
        f = sys._getframe(1)
        while f is not None and f is not self.stop_frame:
            loc = f.f_locals
            i, sig = loc.get("i"), loc.get("sigmas")
            if isinstance(i, int) and not isinstance(i, bool) and torch.is_tensor(sig) and self._is_run_window(sig):
                return i
            f = f.f_back
        return None

    def _is_run_window(self, sig) -> bool:
        if any(sig is t for t in self.run_sigmas):
            return True
        s = sig.detach().flatten().to("cpu", torch.float64)
        if s.shape == self.window.shape and torch.allclose(s, self.window, rtol=1e-5, atol=1e-8):
            self.run_sigmas.append(sig)
            return True
        return False


class RunStats:
    """Counts and measured times for the per-run summary line. Each evaluation is timed from the end of the one
    before (the first from the start of the run, so it also holds model loading and is left out of the times)."""

    def __init__(self, clock=time.perf_counter):
        self.slow_steps: set[int] = set()
        self.fast_steps: set[int] = set()
        self.slow_evals = 0
        self.fast_evals = 0
        self.invert_evals = 0
        self.model_passes = 0  # base-model passes (cond + uncond of one evaluation count 2)
        self.weak_calls = 0
        self.recorded_fast = 0  # fast steps that also ran the unconditional pass for a recorder (steered collection)
        self._clock = clock
        self._last = clock()
        self.seconds: dict[str, list] = {"slow": [], "fast": [], "invert": []}  # per evaluation, after the first

    def record(self, step: int, kind: str, passes: int, weak_called: bool) -> None:
        """kind: 'slow', 'fast' or 'invert' (a zigzag inversion)."""
        now = self._clock()
        if self.evaluations:
            self.seconds[kind].append(now - self._last)
        self._last = now
        if kind == "slow":
            self.slow_steps.add(step)
            self.slow_evals += 1
        elif kind == "fast":
            self.fast_steps.add(step)
            self.fast_evals += 1
        else:
            self.invert_evals += 1
        self.model_passes += passes
        self.weak_calls += int(weak_called)

    @property
    def evaluations(self) -> int:
        return self.slow_evals + self.fast_evals + self.invert_evals

    @property
    def cfg_passes(self) -> int:
        """What plain CFG sampling costs with the same sampler and steps: 2 passes per denoising evaluation. A zigzag
        step's inversion and its second denoise are extra work of the zigzag methods, not part of plain CFG."""
        return 2 * (self.slow_evals + self.fast_evals - self.invert_evals)

    def time_note(self) -> str:
        """What the measured step times say about speed: fewer passes are not less time when a fast step (one pass
        and the weak model) takes about as long as a slow one (two passes), e.g. on small models or a busy CPU."""
        slow, fast = self.seconds["slow"], self.seconds["fast"]
        if self.invert_evals or not slow or not fast:
            return "time against CFG not measured here (needs slow and fast steps); time a CFG run to compare"
        t_slow, t_fast = statistics.median(slow), statistics.median(fast)
        times = f"a fast step took {t_fast * 1000:.3g} ms, a slow one {t_slow * 1000:.3g} ms"
        if t_fast >= 0.9 * t_slow:
            return (f"{times}, so fewer passes did NOT mean less time here (the weak model and per-step overheads cost "
                    "what the skipped pass saves)")
        n = self.slow_evals + self.fast_evals
        saved = self.fast_evals / n * (1 - t_fast / t_slow)
        return f"{times}: about {saved:.0%} less time than CFG (estimated from these step times)"

    def summary(self, seconds: float, weak_name: str, method: str = "core", placement: str = "") -> str:
        saved = 1 - self.model_passes / self.cfg_passes if self.cfg_passes else 0.0
        zig = f", {self.invert_evals} zigzag inversions" if self.invert_evals else ""
        change = f"{saved:.0%} fewer passes" if saved >= 0 else f"{-saved:.0%} more passes"
        where = ""
        if placement not in ("", "first") and self.slow_steps and self.fast_steps:
            steps = sorted(self.slow_steps)
            where = f" ({placement}: steps {', '.join(map(str, steps[:12]))}{', …' if len(steps) > 12 else ''})"
        if self.recorded_fast:
            return (f"CoRe² ({method}), steered collection: {len(self.slow_steps | self.fast_steps)} steps "
                    f"({len(self.slow_steps)} slow{where}, {len(self.fast_steps)} fast, {self.recorded_fast} fast "
                    f"evaluations also ran the unconditional pass for CoRe² Collect), {self.model_passes} model passes, "
                    f"weak model '{weak_name}' {self.weak_calls} calls; measured {seconds:.2f} s (no time saved: "
                    "every step ran both passes)")
        return (f"CoRe² ({method}): {len(self.slow_steps | self.fast_steps)} steps ({len(self.slow_steps)} slow{where}, "
                f"{len(self.fast_steps)} fast){zig}, {self.model_passes} model passes vs {self.cfg_passes} for CFG "
                f"({change}), weak model '{weak_name}' {self.weak_calls} calls; measured {seconds:.2f} s: "
                f"{self.time_note()}")
