"""Checkpoints: one safetensors file holding model and optimiser tensors and the RNG, with the
JSON state (step, config, callback state, extras) in its metadata header. The schedule and the
data position need no record: both are pure functions of the step.

One file means one atomic ``os.replace``: a crash mid-save leaves the previous checkpoint
intact, never a model from one step with an optimiser from another. A truncated or corrupt
file is reported with its path.

Safetensors checks the header's structure but not the bytes of the tensors, so a flipped bit on
disk or in transfer would load silently and train or evaluate a different model. Each file
therefore carries SHA-256 digests in its metadata (key ``archlab.sha256``): one per tensor
(over its dtype, shape and raw bytes) and one over the JSON state, checked by
:func:`read_checkpoint`. Checkpoints written before digests existed have none and load unchecked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from archlab.atomic import replace_atomically

CHECKPOINT = "checkpoint.safetensors"
COMPRESSED = "checkpoint.archz"  # archlab compress's file in a run folder (archlab.codec)
DIGEST_KEY = "archlab.sha256"


def folder_checkpoint(folder: str | Path) -> Path:
    """A run folder's checkpoint: ``checkpoint.safetensors``, or when only the compressed one
    is there (``archlab compress`` and the original deleted), ``checkpoint.archz``."""
    folder = Path(folder)
    plain, packed = folder / CHECKPOINT, folder / COMPRESSED
    return packed if packed.exists() and not plain.exists() else plain


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (missing, truncated, corrupt), with the file named."""


def _tensor_digest(t: torch.Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}:{list(t.shape)}:".encode())
    # Bytes through a uint8 view: works for every dtype (bf16 has no numpy equivalent).
    h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _digests(tensors: dict[str, torch.Tensor], meta_json: str) -> dict[str, Any]:
    return {"meta": hashlib.sha256(meta_json.encode()).hexdigest(),
            "tensors": {k: _tensor_digest(tensors[k]) for k in sorted(tensors)}}


def _verify(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Raise :class:`CheckpointError` naming the first tensor (or the state) whose digest differs."""
    keys = set(metadata)
    if keys == {"archlab"} or "archlab" not in keys and DIGEST_KEY not in keys:
        return  # written before digests existed, or not by archlab at all: nothing to check against
    if keys != {"archlab", DIGEST_KEY}:  # a damaged key name must not switch the check off
        raise CheckpointError(f"checkpoint {path} is corrupt: unexpected metadata keys {sorted(metadata)[:4]}")
    try:
        want = json.loads(metadata[DIGEST_KEY])
        want_meta, want_tensors = want["meta"], dict(want["tensors"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path} is corrupt: its checksum record is unreadable") from None
    if hashlib.sha256(metadata.get("archlab", "").encode()).hexdigest() != want_meta:
        raise CheckpointError(f"checkpoint {path} is corrupt: the training state fails its checksum")
    if set(tensors) != set(want_tensors):
        odd = sorted(set(tensors) ^ set(want_tensors))
        raise CheckpointError(f"checkpoint {path} is corrupt: tensor names differ from its checksum record "
                              f"({', '.join(odd[:3])})")
    for name in sorted(tensors):
        if _tensor_digest(tensors[name]) != want_tensors[name]:
            raise CheckpointError(f"checkpoint {path} is corrupt: tensor '{name}' fails its checksum")


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
    meta_json = json.dumps(meta)
    metadata = {"archlab": meta_json, DIGEST_KEY: json.dumps(_digests(tensors, meta_json))}
    # save_file is looked up at call time so tests can simulate a crash mid-write
    return replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


# safetensors' dtype names (archlab.codec's) <-> torch dtypes
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def _read_compressed(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from archlab.codec import CodecError, read_compressed

    try:
        items, metadata = read_compressed(path)
    except CodecError as e:
        raise CheckpointError(str(e)) from None
    tensors = {}
    for name, dtype, shape, raw in items:
        t = torch.frombuffer(bytearray(raw), dtype=TORCH_DTYPES[dtype]) if raw else \
            torch.empty(0, dtype=TORCH_DTYPES[dtype])
        tensors[name] = t.reshape(shape)
    return tensors, metadata


def safetensors_items(path: str | Path) -> tuple[list[tuple[str, str, list[int], bytes]], dict[str, str]]:
    """A safetensors file's tensors as ``(name, dtype, shape, raw bytes)`` and its metadata."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        items = []
        for name in f.keys():
            t = f.get_tensor(name).contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            items.append((name, DTYPE_NAMES[t.dtype], list(t.shape), raw))
    return items, metadata


def compress_checkpoint(src: str | Path, dst: str | Path, *, codec: str = "byteplane") -> dict[str, int]:
    """Write the checkpoint ``src`` (checked first) losslessly compressed to ``dst`` (atomically)."""
    read_checkpoint(src)  # a damaged checkpoint is refused, not compressed
    from archlab.codec import write_compressed

    items, metadata = safetensors_items(src)
    sizes: dict[str, int] = {}
    replace_atomically(Path(dst), lambda tmp: sizes.update(write_compressed(tmp, items, metadata, codec=codec)))
    return sizes


def decompress_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """The inverse of :func:`compress_checkpoint`: a safetensors checkpoint with the same
    tensors, bit for bit, and the same metadata."""
    tensors, metadata = _read_compressed(Path(src))
    return replace_atomically(Path(dst), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The file's tensors and its JSON metadata, after checking both against their digests.
    A compressed checkpoint (``archlab compress``) is read the same way."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    from archlab.codec import is_compressed

    if is_compressed(path):
        tensors, metadata = _read_compressed(path)
        try:
            meta = json.loads(metadata.get("archlab", "{}"))
        except ValueError:
            raise CheckpointError(f"checkpoint {path} is corrupt: its metadata is not JSON") from None
        _verify(path, tensors, metadata)
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {path} is corrupt: its metadata is not a JSON object")
        return tensors, meta
    try:
        tensors = load_file(str(path))

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        meta = json.loads(metadata.get("archlab", "{}"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({msg})") from None
    _verify(path, tensors, metadata)
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: its metadata is not a JSON object")
    return tensors, meta


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True, read: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> dict[str, Any]:
    """Load weights (and optimiser / RNG state) in place; returns the saved ``state`` dict.
    ``read``: what :func:`read_checkpoint` already returned for ``path`` (reading and checking
    the digests of every tensor again would double the cost of opening a large run)."""
    tensors, meta = read if read is not None else read_checkpoint(path)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    sd = model.state_dict()
    # load_state_dict would raise a multi-line RuntimeError; say it in one line, with the cause.
    for name, t in weights.items():
        if name in sd and sd[name].shape != t.shape:
            raise CheckpointError(
                f"checkpoint {path} does not match the model: '{name}' is {list(t.shape)} in the checkpoint, "
                f"{list(sd[name].shape)} in the model (a checkpoint of another model configuration?)"
            )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # A name missing because it was a tied duplicate is fine; anything else is an error.
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
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for pid, st in state.items():
            for key, v in st.items():
                # moments have their parameter's shape; scalars (Adam's step) have none
                if torch.is_tensor(v) and v.dim() and pid < len(params) and v.shape != params[pid].shape:
                    raise CheckpointError(
                        f"checkpoint {path} does not match the optimiser: state '{key}' of parameter {pid} is "
                        f"{list(v.shape)}, the parameter {list(params[pid].shape)}"
                    )
        try:
            optimizer.load_state_dict({"state": state, "param_groups": om["param_groups"]})
        except (ValueError, KeyError, RuntimeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"checkpoint {path} does not match the optimiser ({msg})") from None
    if restore_rng and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
            if states:
                torch.cuda.set_rng_state_all(states)
    return meta.get("state", {})
