"""The ``archlab`` command: thin — parse arguments, call into the package, print.

Every user mistake (bad config, missing file, corrupt checkpoint) ends in one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archlab.registry import ConfigError


def _cmd_train(a: argparse.Namespace) -> int:
    from archlab.config import load_config
    from archlab.train import Trainer

    cfg = load_config(a.config, a.set)
    summary = Trainer(cfg, a.out, resume=a.resume, progress=not a.no_progress).fit()
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from archlab.data import prepare_corpus
    from archlab.train.evaluate import evaluate
    from archlab.train.run import load_run

    run = load_run(a.run)
    d, t = run.cfg.data, run.cfg.train
    if d.corpus == "task":
        return _eval_task(run, a)
    if a.split not in ("train", "validation", "val", "test"):
        raise ConfigError(f"--split: '{a.split}'; allowed: train, validation, test")
    streams = prepare_corpus(corpus=d.corpus, path=d.path, tokenizer=run.tokenizer, cache_dir=d.cache_dir)
    split = _split_name(a)
    res = evaluate(run.model, streams[split], seq_len=a.seq_len or t.seq_len, batch_size=a.batch,
                   max_tokens=a.max_tokens)
    return _report_eval(a, {"split": split, "step": run.state.get("step"), **res},
                        "{split}: loss {loss:.4f} nats  bpb {bpb:.4f}  ({tokens} tokens, step {step})")


def _split_name(a: argparse.Namespace) -> str:
    return "validation" if a.split == "val" else a.split


def _report_eval(a: argparse.Namespace, res: dict, line: str) -> int:
    """``archlab eval``'s result: one JSON object with ``--json``, else ``line`` filled in."""
    print(json.dumps(res) if a.json else line.format(**res))
    return 0


def _eval_task(run, a: argparse.Namespace) -> int:
    """A task run: error rates and answer loss on one split (``--split`` any of the task's splits)."""
    from archlab.data.taskdata import build_task_data
    from archlab.train.taskeval import evaluate_task

    data = build_task_data(run.cfg.data.task)
    split = _split_name(a)
    if split not in data.splits:
        raise ConfigError(f"--split: '{a.split}' is not a split of task '{data.kind}'; allowed: {', '.join(data.splits)}")
    if a.max_tokens is not None or a.seq_len is not None:
        raise ConfigError("--max-tokens / --seq-len: not used for a task run (whole splits are scored)")
    res = {"split": split, "step": run.state.get("step"),
           **evaluate_task(run.model, data.splits[split], batch_size=a.batch)}
    return _report_eval(a, res, "{split}: error {error:.4f}  token error {token_error:.4f}  answer loss "
                                "{loss:.4f} nats  ({examples} examples, step {step})")


def _cmd_generate(a: argparse.Namespace) -> int:
    import torch

    from archlab.models import generate
    from archlab.train.run import load_run

    run = load_run(a.run)
    tok = run.tokenizer
    ids = tok.encode(a.prompt)
    if not ids:
        raise ConfigError("--prompt: must not be empty")
    g = torch.Generator().manual_seed(a.seed)
    stops = [tok.encode(s) for s in (a.stop or [])]
    out = generate(run.model, torch.tensor([ids]), max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                   top_k=a.top_k, top_p=a.top_p, stop=stops, generator=g, use_cache=not a.no_cache)
    new = out[0, len(ids):].tolist()
    for s in stops:  # the stop sequence ends the text and is not shown
        if s and new[-len(s):] == s:
            new = new[: -len(s)]
            break
    sep = " " if getattr(tok, "name", "") == "task_vocab" and new else ""  # a task's word vocabulary
    print(a.prompt + sep + tok.decode(new))
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from archlab.config import load_config
    from archlab.lab.info import describe

    print(describe(load_config(a.config, a.set)))
    return 0


# ``archlab bench NAME [options]``: NAME -> (module, function taking (argv, name) -> exit code).
# A benchmark is one module with a ``main(argv, mode)``; adding one is one line here.
BENCHES: dict[str, tuple[str, str]] = {
    "train": ("archlab.lab.throughput", "main"),
    "generate": ("archlab.lab.throughput", "main"),
    "all": ("archlab.lab.throughput", "main"),
    "scaling": ("archlab.lab.scaling", "main"),
    "hier": ("archlab.lab.hier_bench", "main"),
    "local": ("archlab.lab.local_bench", "main"),
    "variants": ("archlab.lab.variants_bench", "main"),
}


def _cmd_bench(a: argparse.Namespace) -> int:
    import importlib

    module, func = BENCHES[a.what]
    return getattr(importlib.import_module(module), func)(a.rest, mode=a.what)


def _cmd_compare(a: argparse.Namespace) -> int:
    from archlab.lab.compare import run_compare
    from archlab.lab.report import summary_table_md

    command = " ".join(["archlab", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("archlab") else None
    results = run_compare(a.experiment, a.out, command=command, progress=not a.no_progress,
                          report=not a.no_report)
    print()
    print(summary_table_md(results))
    if not a.no_report:
        print(f"\nreport: {Path(a.out) / 'report.html'} (and report.md)")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from archlab.lab.report import rebuild

    paths = rebuild(a.dir)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from archlab.hf.export import export_run

    print(f"wrote {export_run(a.run, a.hf)}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from archlab.lab.demo import run_demo

    return run_demo(out=a.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archlab", description="A laboratory for transformer architecture ideas.")
    sub = p.add_subparsers(dest="command", required=True)

    def overrides(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.position.kind=alibi (repeatable)")

    sp = sub.add_parser("train", help="train a model from a YAML config")
    sp.add_argument("config", help="YAML config (see configs/)")
    sp.add_argument("--out", required=True, help="run folder (metrics, checkpoint, summary)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    overrides(sp)
    sp.set_defaults(func=_cmd_train)

    sp = sub.add_parser("eval", help="evaluate a run or checkpoint on a held-out split")
    sp.add_argument("run", help="run folder or checkpoint file")
    sp.add_argument("--split", default="test",
                    help="train, validation (val) or test; a task run also takes its OOD splits (ood_*)")
    sp.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N targets")
    sp.add_argument("--seq-len", type=int, default=None, help="window length (default: the training length)")
    sp.add_argument("--batch", type=int, default=16)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(func=_cmd_eval)

    sp = sub.add_parser("generate", help="sample text from a run (KV-cached)")
    sp.add_argument("run", help="run folder or checkpoint file")
    sp.add_argument("--prompt", required=True)
    sp.add_argument("--max-new-tokens", type=int, default=200)
    sp.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sp.add_argument("--top-k", type=int, default=None)
    sp.add_argument("--top-p", type=float, default=None)
    sp.add_argument("--stop", action="append", help="stop when this text is produced (repeatable)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step")
    sp.set_defaults(func=_cmd_generate)

    sp = sub.add_parser("info", help="parameter count, FLOPs per token and the layer table of a config")
    sp.add_argument("config", nargs="?", default=None)
    overrides(sp)
    sp.set_defaults(func=_cmd_info)

    sp = sub.add_parser("bench", help=f"benchmarks: {', '.join(BENCHES)}",
                        description=f"archlab bench {{{','.join(BENCHES)}}} [options]; "
                                    "'archlab bench train --help' lists the options")
    sp.add_argument("what", choices=list(BENCHES))
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    sp.set_defaults(func=_cmd_bench)

    sp = sub.add_parser("compare", help="train variants × seeds at equal budget; statistics and a report")
    sp.add_argument("experiment", help="experiment YAML (see experiments/)")
    sp.add_argument("--out", required=True, help="experiment folder (re-running resumes it)")
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--no-report", action="store_true", help="results.json only")
    sp.set_defaults(func=_cmd_compare)

    sp = sub.add_parser("report", help="rebuild report.md/.html and plots from DIR/results.json")
    sp.add_argument("dir")
    sp.set_defaults(func=_cmd_report)

    sp = sub.add_parser("export", help="convert a run to a Hugging Face transformers folder")
    sp.add_argument("run", help="run folder or checkpoint file")
    sp.add_argument("--hf", required=True, metavar="DIR", help="output folder (from_pretrained-loadable)")
    sp.set_defaults(func=_cmd_export)

    sp = sub.add_parser("demo", help="the main job on the embedded corpus")
    sp.add_argument("--out", default="runs/quick")
    sp.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from archlab.train.checkpoint import CheckpointError
    from archlab.train.trainer import TrainingStopped

    try:
        return args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"archlab: error: {msg}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"archlab: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("archlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
