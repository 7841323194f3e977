"""Checkpoints: one safetensors file holding model and optimiser tensors, with the JSON state
(step, schedule, RNG, data position, config, extras) in its metadata header.

One file means one atomic ``os.replace``: a crash mid-save leaves the previous checkpoint
intact, never a model from one step with an optimiser from another. A truncated or corrupt
file is reported with its path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from archlab.atomic import replace_atomically

CHECKPOINT = "checkpoint.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (missing, truncated, corrupt), with the file named."""


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights appear twice in state_dict(); keep the first name only (safetensors refuses
    # shared storage) and re-tie on load through load_state_dict(strict=False) + checks.
    out, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        out["model." + name] = t.detach().cpu().contiguous()
    return out


def _optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _model_tensors(model)
    meta: dict[str, Any] = {"state": state or {}}
    if optimizer is not None:
        ot, meta["optimizer"] = _optim_tensors(optimizer)
        tensors.update(ot)
    rng = torch.get_rng_state()
    tensors["rng.torch"] = rng
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    # save_file is looked up at call time so tests can simulate a crash mid-write
    return replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata={"archlab": json.dumps(meta)}))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path))

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("archlab", "{}"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0]})") from None
    return tensors, meta


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimiser / RNG state) in place; returns the saved ``state`` dict."""
    tensors, meta = read_checkpoint(path)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # A name missing because it was a tied duplicate is fine; anything else is an error.
    sd = model.state_dict()
    ptr_names: dict[int, str] = {}
    for name, t in sd.items():
        ptr_names.setdefault(t.data_ptr(), name)
    real_missing = [m for m in missing if ptr_names.get(sd[m].data_ptr()) == m]
    if real_missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model: missing {real_missing[:5]}, unexpected {unexpected[:5]}"
        )
    if optimizer is not None:
        if "optimizer" not in meta:
            raise CheckpointError(f"checkpoint {path} has no optimiser state")
        om = meta["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        for k, v in om["scalars"].items():
            pid, key = k.split(".", 1)
            state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": om["param_groups"]})
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
            if states:
                torch.cuda.set_rng_state_all(states)
    return meta.get("state", {})
