"""``archlab demo`` (``make demo``): the main job on the embedded corpus.

Runs ``experiments/quick.yaml`` — positional schemes compared at equal tokens over three
seeds on the standard library's source — writes the report, prints the summary table, and
samples from the best variant. Re-running resumes (finished runs are skipped).
"""

from __future__ import annotations

from pathlib import Path

import torch

from archlab.lab.compare import run_compare
from archlab.lab.report import summary_table_md
from archlab.models import generate
from archlab.train.run import load_run

ROOT = Path(__file__).resolve().parents[3]
EXPERIMENT = ROOT / "experiments" / "quick.yaml"
PROMPT = "def "


def run_demo(out: str | Path = "runs/quick") -> int:
    out = Path(out)
    # the demo owns its folder: runs left by another archlab or another experiment file are redone
    results = run_compare(EXPERIMENT, out, command=f"archlab demo --out {out}", rerun_stale=True)
    print()
    print(summary_table_md(results))
    metric = results["experiment"]["metric"]
    finished = [v for v, s in results["variants"].items() if s.get("mean") is not None]
    if not finished:
        print("no variant finished; see the run folders for the errors")
        return 1
    best = min(finished, key=lambda v: results["variants"][v]["mean"])
    run = load_run(out / best / f"seed{results['experiment']['seeds'][0]}")
    ids = torch.tensor([run.tokenizer.encode(PROMPT)])
    sample = generate(run.model, ids, max_new_tokens=200, temperature=0.7, top_k=40,
                      generator=torch.Generator().manual_seed(0))
    print(f"\nsample from '{best}' (lowest mean {metric}), prompt {PROMPT!r}:")
    print("-" * 60)
    print(run.tokenizer.decode(sample[0].tolist()))
    print("-" * 60)
    print(f"report: {out / 'report.html'}  (markdown: {out / 'report.md'}, plots: {out / 'plots'})")
    return 0
