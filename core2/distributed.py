"""Reflect on several processes (torch.distributed, launched by torchrun); plain torch, no ComfyUI.

    torchrun --nproc_per_node=N -m core2.train --dataset DIR --out FILE.safetensors ...

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; start() then joins the process group (gloo on CPU, nccl on GPUs) and
each process trains on its part of every global batch (train.py draws the global batch exactly as one process does
and gives rank k the k-th contiguous slice). Without those variables, or with WORLD_SIZE 1, nothing here changes a
run: World() is one process, sum() and barrier() do nothing and no DistributedDataParallel wrapper is made.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class World:
    """The processes of one training run: this one's rank, how many there are, its GPU index on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that validates, writes checkpoints and the finished model, and reports."""
        return self.rank == 0

    def part(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous slice of n rows (sizes differ by at most one; n < size leaves some
        ranks empty)."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over all ranks (a copy; t itself is left alone)."""
        if not self.distributed:
            return t
        t = t.detach().clone()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


SINGLE = World()


def env_world() -> World:
    """The World torchrun describes in the environment (one process when it is not there)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0") or 0))


def start(device: str) -> tuple[World, str]:
    """Join torchrun's process group when there is one; returns the World and this process's device ("cuda" becomes
    "cuda:<LOCAL_RANK>"). gloo for CPU training, nccl for CUDA."""
    world = env_world()
    if not world.distributed:
        return world, device
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"CoRe²: distributed training runs on cpu (gloo) or cuda (nccl), not on {device}.")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return world, str(dev)


def stop(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_batch_size(batch_size: int, world: World) -> None:
    if batch_size % world.size:
        raise ValueError(f"CoRe²: batch size {batch_size} does not split evenly over {world.size} processes; use a "
                         f"multiple of {world.size} (the batch size is the global batch, shared by all processes).")


class _Forward(torch.nn.Module):
    """model + a prediction function as one module, so that DistributedDataParallel sees the prediction as forward()
    (the weak model's own entry points are predict_uncond / encode_prompts, not forward)."""

    def __init__(self, model: torch.nn.Module, predict: Callable):
        super().__init__()
        self.model = model
        self._predict = predict

    def forward(self, batch: dict) -> torch.Tensor:
        return self._predict(self.model, batch)


def wrap(model: torch.nn.Module, predict: Callable, world: World, device: torch.device) -> Callable:
    """predict(model, batch) as this run trains it: through DistributedDataParallel (gradients averaged over the
    ranks, weights broadcast from rank 0 first) when there are several processes, plain otherwise."""
    if not world.distributed:
        return lambda batch: predict(model, batch)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_Forward(model, predict), device_ids=ids, find_unused_parameters=True)


__all__ = ["World", "SINGLE", "env_world", "start", "stop", "check_batch_size", "wrap"]
