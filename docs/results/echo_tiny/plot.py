"""The training curve of a speech run: training loss, validation WER and CER against minutes.

    .venv/bin/python docs/results/echo_tiny/plot.py runs/echo_tiny docs/results/echo_tiny/curve.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(run: str, out: str) -> None:
    recs = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in recs if "loss" in r and "elapsed" in r]
    val = [r for r in recs if "val_wer" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["elapsed"] / 60 for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    a.plot([r["elapsed"] / 60 for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    a.set_xlabel("minutes"), a.set_ylabel("nats per character"), a.set_yscale("log"), a.legend()
    b.plot([r["elapsed"] / 60 for r in val], [100 * r["val_wer"] for r in val], "o-", label="WER")
    b.plot([r["elapsed"] / 60 for r in val], [100 * r["val_cer"] for r in val], "s-", label="CER")
    b.axhline(10, color="grey", ls=":", lw=1)
    b.set_xlabel("minutes"), b.set_ylabel("% (greedy, validation)"), b.set_ylim(0, 100), b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:3])
