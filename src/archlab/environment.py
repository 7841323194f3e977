"""What a reader needs to judge a number: the machine, the threads, the library versions.

One capture for both the research reports (:mod:`archlab.lab.compare`) and the benchmarks
(:mod:`archlab.bench`), so the two describe a machine in the same words.
"""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), falling back to :mod:`platform`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine line of a compare report: CPU, cores, torch threads, device, platform."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "device": device,
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict[str, str]:
    """archlab, torch and Python versions (a compare report's versions line)."""
    import archlab

    return {"archlab": archlab.__version__, "torch": torch.__version__, "python": platform.python_version()}


def package_versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of the named distributions (``None`` for one that is not installed)."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def benchmark_environment() -> dict[str, Any]:
    """The ``environment`` record of a benchmark's JSON: versions, threads, CPU, accelerator."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "cuda": torch.cuda.is_available(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
    return env
