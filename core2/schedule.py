"""Which schedule step a model evaluation belongs to, and whether that step runs slow or fast.

Samplers evaluate the model at σ values of the schedule and, for second-order and ancestral samplers, in between.
An evaluation at σ belongs to step i when schedule[i] ≥ σ > schedule[i+1] (a small relative tolerance absorbs
float noise); an evaluation exactly at a step boundary belongs to the later step, i.e. to its noise level.
"""
from __future__ import annotations

import torch


class StepMap:
    def __init__(self, schedule: torch.Tensor, slow_steps: int, rtol: float = 1e-4):
        s = torch.as_tensor(schedule, dtype=torch.float64).flatten().cpu()
        if s.numel() < 2:
            raise ValueError("a sampling schedule needs at least two σ values")
        self.schedule = s
        self.total = s.numel() - 1
        self.slow_steps = int(slow_steps)
        self.rtol = rtol

    def index(self, sigma) -> int:
        sig = float(torch.as_tensor(sigma).flatten()[0])
        tol = self.rtol * max(abs(sig), 1e-8)
        # the last step whose upper edge is ≥ σ; above the schedule (σ_hat with churn) is step 0
        above = (self.schedule[:-1] >= sig - tol).nonzero()
        return int(above[-1]) if above.numel() else 0

    def is_slow(self, step_index: int) -> bool:
        return step_index < self.slow_steps


class RunStats:
    """Counts for the per-run summary line."""

    def __init__(self):
        self.slow_steps: set[int] = set()
        self.fast_steps: set[int] = set()
        self.slow_evals = 0
        self.fast_evals = 0
        self.invert_evals = 0
        self.model_passes = 0  # base-model passes (cond + uncond of one evaluation count 2)
        self.weak_calls = 0

    def record(self, step: int, kind: str, passes: int, weak_called: bool) -> None:
        """kind: 'slow', 'fast' or 'invert' (a zigzag inversion)."""
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

    def summary(self, seconds: float, weak_name: str, method: str = "core") -> str:
        saved = 1 - self.model_passes / self.cfg_passes if self.cfg_passes else 0.0
        zig = f", {self.invert_evals} zigzag inversions" if self.invert_evals else ""
        change = f"{saved:.0%} fewer" if saved >= 0 else f"{-saved:.0%} more"
        return (f"CoRe² ({method}): {len(self.slow_steps | self.fast_steps)} steps ({len(self.slow_steps)} slow, "
                f"{len(self.fast_steps)} fast){zig}, {self.model_passes} model passes vs {self.cfg_passes} for CFG "
                f"({change}), weak model '{weak_name}' {self.weak_calls} calls, {seconds:.2f} s")
