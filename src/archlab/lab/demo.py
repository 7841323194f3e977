"""``archlab demo`` (``make demo``): the main job on the embedded corpus.

Trains the default LM (configs/lm.yaml) briefly on the standard library's source, then prints
validation bits per byte and samples. Re-running resumes the same run folder instead of
overwriting it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from archlab.config import load_config
from archlab.models import generate
from archlab.train import Trainer
from archlab.train.checkpoint import CHECKPOINT

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "lm.yaml"
DEMO_STEPS = 150
PROMPTS = ["def ", "import os\n\nclass "]


def run_demo(out: str | Path = "runs/demo") -> int:
    out = Path(out)
    cfg = load_config(CONFIG if CONFIG.exists() else None,
                      [f"train.steps={DEMO_STEPS}", "train.tokens=null", "train.eval_every=50"])
    trainer = Trainer(cfg, out, resume=(out / CHECKPOINT).exists())
    summary = trainer.fit()
    print(f"\nvalidation: {summary['final_val_bpb']:.3f} bits per byte after {summary['tokens']:,} tokens "
          f"({summary['parameters']:,} parameters)")
    g = torch.Generator().manual_seed(0)
    tok = trainer.tokenizer
    for p in PROMPTS:
        ids = torch.tensor([tok.encode(p)])
        outp = generate(trainer.model, ids, max_new_tokens=160, temperature=0.7, top_k=40, generator=g)
        print("-" * 60)
        print(tok.decode(outp[0].tolist()))
    print("-" * 60)
    print(f"run folder: {out}  (archlab eval {out} / archlab generate {out} --prompt ...)")
    return 0
