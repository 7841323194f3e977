"""Shared helpers for the model/part tests: a tiny validated config and a seeded builder."""

from __future__ import annotations

import json

import random

import pytest
import torch

from archlab.config import Config, load_config
from archlab.models import build_model

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
# spinning threads make a 2 ms forward take 250 ms.
torch.set_num_threads(1)

# dim 32, depth 2, 4 heads, byte vocabulary: small enough that every test runs in milliseconds.
TINY = {
    "model.dim": 32,
    "model.depth": 2,
    "model.heads": 4,
    "model.max_seq_len": 64,
    "data.tokenizer": "bytes",
    "train.seq_len": 32,
    "train.batch": 4,
    "train.steps": 10,
}


def make_tiny_config(*sets: str, **overrides) -> Config:
    """Validated tiny Config through the command-line path: ``load_config(None, ["k=v", ...])``.

    ``sets`` are ``--set`` strings ("model.position.kind=alibi"); keyword overrides take
    dotted keys (``**{"model.position.kind": "alibi"}``) or ``__`` for dots, with Python
    values (written out as YAML flow values).
    """
    items = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    items += list(sets)
    items += [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in overrides.items()]
    return load_config(None, items)


def build_seeded(cfg: Config, seed: int = 0, *, double: bool = False) -> torch.nn.Module:
    """The config's model, built under ``torch.manual_seed(seed)``, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    return model.double() if double else model


@pytest.fixture
def tiny_config():
    return make_tiny_config


@pytest.fixture
def build():
    return build_seeded


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small deterministic text file, so runs need no stdlib scan."""
    rng = random.Random(0)
    words = ["def", "class", "return", "self", "import", "for", "in", "if", "else", "x", "y", "(", ")", ":"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(6000))
    p = tmp_path_factory.mktemp("corpus") / "text.txt"
    p.write_text(text)
    return p
