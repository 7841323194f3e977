"""Open a finished (or interrupted) run: its config, model weights and tokenizer.

A run is a run folder (or its checkpoint file), or a Hugging Face folder that
``archlab export RUN --hf DIR`` wrote from one: ``archlab eval`` and ``archlab generate``
take either and see the same :class:`LoadedRun`. The HF folder is read without
``transformers`` (its ``config.json`` and safetensors weights are plain files), so opening
one costs no more than opening the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archlab.config import Config, parse_config
from archlab.data import ByteTokenizer, load_tokenizer
from archlab.data.tokenizer import check_tokenizer
from archlab.models import build_model
from archlab.registry import ConfigError
from archlab.train.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    folder_checkpoint,
    load_checkpoint,
    read_checkpoint,
)
from archlab.train.objectives import objective_for

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"  # save_pretrained's name for sharded weights
HF_MODEL_TYPE = "archlab"  # archlab.hf.configuration.ArchlabConfig.model_type (not imported: no transformers)


@dataclass
class LoadedRun:
    cfg: Config
    model: nn.Module
    tokenizer: object
    state: dict
    # The checkpoint file; for a Hugging Face folder its weights file. Either way .parent is
    # the folder holding tokenizer.json.
    path: Path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (clear error otherwise)."""
    p = Path(path)
    if p.is_dir():  # the checkpoint, or the compressed one archlab compress left in its place
        p = folder_checkpoint(p)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p} (give a run folder or a .safetensors checkpoint)")
    return p


def is_hf_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a Hugging Face ``config.json`` and no archlab checkpoint
    (whatever its model type: :func:`load_run` then says which it is)."""
    p = Path(path)
    return p.is_dir() and not folder_checkpoint(p).exists() and (p / HF_CONFIG).is_file()


def load_run(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedRun:
    """Config from the checkpoint itself (it is self-contained), weights, and the run's tokenizer;
    or the same from an exported Hugging Face folder (see :func:`load_hf_folder`)."""
    if is_hf_folder(path):
        return load_hf_folder(path, device=device)
    ckpt = resolve_checkpoint(path)
    tensors, meta = read_checkpoint(ckpt)
    state = meta.get("state", {})
    if "config" not in state:
        raise CheckpointError(f"checkpoint {ckpt} carries no config")
    cfg = parse_config(state["config"])
    model = build_model(cfg.model)
    load_checkpoint(ckpt, model=model, restore_rng=False, read=(tensors, meta))
    if cfg.train.dynamics:  # adapted scalars (rotary base, window, dropout) are not weights
        from archlab.train.dynamics import restore

        restore(model, cfg.train.dynamics, state)
    model.to(device).eval()
    return LoadedRun(cfg=cfg, model=model, tokenizer=_tokenizer(ckpt.parent, cfg), state=state, path=ckpt)


def load_hf_folder(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedRun:
    """An exported Hugging Face folder as the run it came from.

    The model config is ``config.json``'s ``archlab`` field, the data and train sections and
    the step its ``archlab_run`` field (written by :func:`archlab.hf.export.export_run`); the
    weights are the safetensors file(s) under the wrapper's ``model.`` prefix, loaded bit for
    bit. ``state`` holds what the export recorded (step, tokens). One-line
    :class:`CheckpointError` for a folder of another model type, one saved without the run's
    record (a bare ``save_pretrained``), or weights that do not fit the config.
    """
    folder = Path(path)
    cfg_file = folder / HF_CONFIG
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable ({type(e).__name__})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != HF_MODEL_TYPE:
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise CheckpointError(f"{folder}: a Hugging Face folder of model type {kind!r}, not '{HF_MODEL_TYPE}' "
                              f"(and no archlab {CHECKPOINT})")
    run = raw.get("archlab_run")
    if not isinstance(run, dict) or not isinstance(raw.get("archlab"), dict):
        raise CheckpointError(f"{cfg_file}: no archlab_run record (the run's data/train config); "
                              "write the folder with `archlab export RUN --hf DIR`")
    try:
        cfg = parse_config({"model": raw["archlab"], "data": run.get("data", {}), "train": run.get("train", {})},
                           require_budget=False)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    model = build_model(cfg.model)
    weights_file = _load_hf_weights(folder, model)
    model.to(device).eval()
    state = dict(run.get("state") or {})
    return LoadedRun(cfg=cfg, model=model, tokenizer=_tokenizer(folder, cfg), state=state, path=weights_file)


def _load_hf_weights(folder: Path, model: nn.Module) -> Path:
    """Load ``model.``-prefixed safetensors weights (one file or save_pretrained's shards)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / HF_WEIGHTS_INDEX
    try:
        if (folder / HF_WEIGHTS).is_file():
            files = [folder / HF_WEIGHTS]
        elif index.is_file():
            files = [folder / f for f in sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))]
        else:
            raise CheckpointError(f"{folder}: no {HF_WEIGHTS} (nor {HF_WEIGHTS_INDEX})")
        tensors = {}
        for f in files:
            tensors.update(load_file(str(f)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{folder}: unreadable weights ({msg})") from None
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    sd = model.state_dict()
    bad = [k for k in tensors if not k.startswith(prefix) or k[len(prefix):] not in sd]
    bad += [k for k, t in weights.items() if k in sd and sd[k].shape != t.shape]
    if bad:
        raise CheckpointError(f"{folder}: weights do not match config.json's model: e.g. '{bad[0]}' "
                              "(unknown name or other shape)")
    missing, _ = model.load_state_dict(weights, strict=False)
    # save_pretrained stores a shared parameter once (tied head, shared position table): a
    # missing name is fine when the tensor behind it was loaded under another name.
    loaded = {sd[k].data_ptr() for k in weights}
    real_missing = [k for k in missing if sd[k].data_ptr() not in loaded]
    if real_missing:
        raise CheckpointError(f"{folder}: weights lack {len(real_missing)} tensors of the model, e.g. "
                              f"'{prefix}{real_missing[0]}'")
    return files[0]


def _tokenizer(folder: Path, cfg: Config) -> object:
    kind = objective_for(cfg).tokenizer_kind(cfg)
    if (folder / "tokenizer.json").exists():
        return check_tokenizer(load_tokenizer(folder), kind=kind, model_vocab=cfg.model.vocab_size,
                               where=str(folder / "tokenizer.json"))
    if kind == "bytes":  # the byte tokenizer has no state to lose
        return ByteTokenizer()
    raise CheckpointError(f"{folder}: tokenizer.json is missing (needed for the run's tokenizer)")
