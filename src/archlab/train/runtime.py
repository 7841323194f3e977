"""Device, precision and seeding choices, made once per run."""

from __future__ import annotations

import contextlib
import random
import resource
import sys

import numpy as np
import torch

from archlab.registry import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def available_devices() -> list[str]:
    """The ``train.device`` values that work on this machine (for error messages)."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] + [f"cuda:{i}" for i in range(n)]
    if _mps_available():
        out.append("mps")
    return out


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA if present, then Apple MPS, else CPU; cpu, cuda, cuda:N, mps as given.

    A device this machine does not have is refused here, in one line, because the failure
    would otherwise come at the first ``.to(device)``, after the data was prepared."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"train.device: '{name}' is not a device; allowed: {DEVICE_CHOICES}") from None
    here = ", ".join(available_devices())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: '{name}' requested but CUDA is not available; allowed here: {here}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: '{name}' but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s); allowed here: {here}")
    elif dev.type == "mps":
        if not _mps_available():
            raise ConfigError(f"train.device: '{name}' requested but MPS is not available; allowed here: {here}")
    elif dev.type != "cpu" or dev.index not in (None, 0):
        raise ConfigError(f"train.device: '{name}' is not supported; allowed: {DEVICE_CHOICES}")
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
