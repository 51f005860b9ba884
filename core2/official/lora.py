"""Linear layers with a bank of per-step LoRAs, in the key layout of the official CoRe² weights.

State-dict names (the official `LinearWithLoRA` of `lora.py`): `linear.weight`, `linear.bias` (if any), and for LoRA j
`lora.{j}.A` [in, r] and `lora.{j}.B` [r, out]. The official forward is `linear(x) + alpha·(x @ A_j @ B_j)` with
alpha = 1 and no rank scaling.

Two ways to apply LoRA j, equal up to rounding:
* unmerged: `linear(x) + (x @ A_j) @ B_j`;
* merged: `x @ (W + (A_j B_j)ᵀ)ᵀ + b`, with the merged weight computed in fp32 once per index and cached.
Merging pays `2·in·out·r` FLOPs once; the unmerged path pays `2·(in+out)·r` per input row. The "auto" policy merges
only where the call has enough rows to make merging cheaper (the patch-token layers), so the whole bank is never
touched in a call and only one merged copy per layer (for the current index) is kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MERGE_POLICIES = ("auto", "always", "never")


class LoRAPair(nn.Module):
    """One LoRA of the bank: A [in, r], B [r, out]."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_features, rank, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.empty(rank, out_features, device=device, dtype=dtype))


class LoRABankLinear(nn.Module):
    """`nn.Linear` plus `n_lora` LoRAs; `active` picks the LoRA (None: none)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, n_lora: int, alpha: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.alpha = float(alpha)
        self.linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.lora = nn.ModuleList(LoRAPair(in_features, out_features, rank, device, dtype) for _ in range(n_lora))
        self.active: int | None = 0
        self.merge_policy = "auto"
        self._merged: tuple | None = None  # (key, merged weight)

    @property
    def n_lora(self) -> int:
        return len(self.lora)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, n_lora={self.n_lora}"

    def clear_merged(self) -> None:
        self._merged = None

    def _apply(self, fn, *args, **kwargs):  # .to()/.half()/...: drop the merged copy
        self._merged = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):  # load_state_dict copies in place: drop the merged copy
        self._merged = None
        return super()._load_from_state_dict(*args, **kwargs)

    def merged_weight(self, j: int) -> torch.Tensor:
        """W + alpha·(A_j B_j)ᵀ, computed in fp32 and cast to the weight's dtype; cached for the last index used.

        The cache key is (index, device, dtype, storage of W, A_j, B_j): moving or reloading the weights invalidates it.
        After editing weights in place, call `clear_merged()`.
        """
        w = self.linear.weight
        p = self.lora[j]
        key = (j, w.device, w.dtype, w.data_ptr(), p.A.data_ptr(), p.B.data_ptr())
        if self._merged is not None and self._merged[0] == key:
            return self._merged[1]
        with torch.no_grad():
            delta = (p.A.detach().float() @ p.B.detach().float()).t()
            merged = (w.detach().float() + self.alpha * delta).to(w.dtype)
        self._merged = (key, merged)
        return merged

    def _should_merge(self, x: torch.Tensor) -> bool:
        if self.merge_policy == "always":
            return True
        if self.merge_policy == "never" or torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return False
        rows = x.numel() // max(1, self.in_features)
        return rows * (self.in_features + self.out_features) >= self.in_features * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        j = self.active
        if j is None:
            return self.linear(x)
        if not 0 <= j < self.n_lora:
            raise IndexError(f"LoRA index {j} out of range 0..{self.n_lora - 1}")
        if self._should_merge(x):
            return F.linear(x, self.merged_weight(j), self.linear.bias)
        p = self.lora[j]
        out = self.linear(x)
        lo = (x @ p.A) @ p.B
        return out + (lo if self.alpha == 1.0 else self.alpha * lo)


def set_active_lora(module: nn.Module, index: int | None) -> None:
    """Select LoRA `index` (None: base weights only) on every LoRABankLinear inside `module`."""
    for m in module.modules():
        if isinstance(m, LoRABankLinear):
            m.active = index


def set_merge_policy(module: nn.Module, policy: str) -> None:
    if policy not in MERGE_POLICIES:
        raise ValueError(f"merge policy must be one of {MERGE_POLICIES}, got {policy!r}")
    for m in module.modules():
        if isinstance(m, LoRABankLinear):
            m.merge_policy = policy
            m.clear_merged()


def clear_merged(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, LoRABankLinear):
            m.clear_merged()
