"""Data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N -m archlab train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`setup` then joins the process group (gloo on CPU, NCCL on CUDA). Each rank draws its
own rows of the global batch (see :class:`archlab.data.WindowSampler`), gradients are
averaged by DDP, and only rank 0 logs, evaluates and writes checkpoints. Because the global
batch is the same whatever the number of ranks, N processes follow the 1-process run up to
floating-point reduction order.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (idempotent); 1-process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        # Leave the group while the interpreter is still whole: otherwise gloo's worker threads
        # free tensors during interpreter finalisation and the rank dies of SIGABRT after a
        # successful run (seen once in CI; the mechanism is pytorch/pytorch PR 179291's).
        atexit.register(shutdown)
    return DistInfo(rank=rank, world=world, local_rank=local)


def shutdown() -> None:
    """Leave the process group (a no-op outside one); registered at exit by :func:`setup`."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Logical AND across ranks: a step is skipped everywhere if it is bad anywhere (a rank
    that skipped backward alone would leave the others waiting in the gradient all-reduce)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Average of a per-rank scalar (each rank's loss covers its own rows of the batch)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world
