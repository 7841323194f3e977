"""Device, precision and seeding choices, made once per run."""

from __future__ import annotations

import contextlib
import random
import resource
import sys

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA if present, then Apple MPS, else CPU. Anything else is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: '{name}' requested but CUDA is not available; allowed here: auto, cpu")
    return dev


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context factory for the run's precision (fp32: a null context).

    auto: bf16 autocast on CUDA devices that support bf16; fp32 elsewhere (bf16 is not
    faster than fp32 on most CPUs, and MPS autocast is incomplete)."""
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if not use_bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: allocator peak on CUDA; the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
