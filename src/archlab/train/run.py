"""Open a finished (or interrupted) run: its config, model weights and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from archlab.config import Config, parse_config
from archlab.data import ByteTokenizer, load_tokenizer
from archlab.models import build_model
from archlab.train.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, read_checkpoint


@dataclass
class LoadedRun:
    cfg: Config
    model: nn.Module
    tokenizer: object
    state: dict
    path: Path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (clear error otherwise)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p} (give a run folder or a .safetensors checkpoint)")
    return p


def load_run(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedRun:
    """Config from the checkpoint itself (it is self-contained), weights, and the run's tokenizer."""
    ckpt = resolve_checkpoint(path)
    _, meta = read_checkpoint(ckpt)
    state = meta.get("state", {})
    if "config" not in state:
        raise CheckpointError(f"checkpoint {ckpt} carries no config")
    cfg = parse_config(state["config"])
    model = build_model(cfg.model)
    load_checkpoint(ckpt, model=model, restore_rng=False)
    if cfg.train.dynamics:  # adapted scalars (rotary base, window, dropout) are not weights
        from archlab.train.dynamics import restore

        restore(model, cfg.train.dynamics, state)
    model.to(device).eval()
    tok_dir = ckpt.parent
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = load_tokenizer(tok_dir)
    elif cfg.data.tokenizer == "bytes":
        tokenizer = ByteTokenizer()
    else:
        raise CheckpointError(f"{tok_dir}: tokenizer.json is missing (needed for the run's BPE tokenizer)")
    return LoadedRun(cfg=cfg, model=model, tokenizer=tokenizer, state=state, path=ckpt)
