"""The ``archlab`` command: thin — parse arguments, call into the package, print.

Every user mistake (bad config, missing or corrupt file, impossible setting) ends in one line
on stderr, ``archlab: error: <what is wrong and what is allowed>``, and exit code 2, never a
traceback; real bugs (TypeError, KeyError, ...) keep theirs, so they get fixed where they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from archlab.argparsing import ArgumentParser
from archlab.bench import BENCHES
from archlab.registry import ConfigError


def version() -> str:
    """The installed distribution's version, or the source tree's when it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("archlab")
    except PackageNotFoundError:
        from archlab import __version__

        return __version__


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""``\n``, ``\t``, ``\r`` and ``\\`` typed on a command line -> newline, tab, carriage
    return, backslash: a shell passes ``"\n\n"`` as four characters, and a stop sequence of a
    literal backslash-n would never occur in generated text. Other backslashes stay."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m[1]], text)


def _config(a: argparse.Namespace, *, require_budget: bool = True):
    from archlab.config import load_config

    return load_config(a.config, a.set, require_budget=require_budget)


def _cmd_train(a: argparse.Namespace) -> int:
    cfg = _config(a)
    if a.dry_run:
        return _dry_run(cfg, Path(a.out))
    from archlab.train import Trainer

    summary = Trainer(cfg, a.out, resume=a.resume, progress=not a.no_progress).fit()
    print(json.dumps(summary, indent=2))
    return 0


def _dry_run(cfg, out: Path) -> int:
    """The resolved config and what a run of it costs; nothing is trained or written."""
    from archlab.lab.info import facts, resolved_yaml
    from archlab.train.checkpoint import CHECKPOINT

    print(resolved_yaml(cfg).rstrip("\n"))
    print()
    print("\n".join(facts(cfg)))
    state = ("holds a checkpoint (--resume continues it)" if (out / CHECKPOINT).exists()
             else "exists" if out.exists() else "would be created")
    print(f"run folder: {out} {state}")
    print("dry run: nothing trained, nothing written")
    return 0


def _positive(a: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(a, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be ≥ 1, got {value}")


def _cmd_eval(a: argparse.Namespace) -> int:
    from archlab.train.objectives import objective_for
    from archlab.train.run import load_run

    _positive(a, "batch", "max_tokens", "seq_len")
    run = load_run(a.run)
    res, line = objective_for(run.cfg).cli_eval(run, split=_split_name(a), batch=a.batch, max_tokens=a.max_tokens,
                                                seq_len=a.seq_len, **_progress(a))
    return _report_eval(a, {"split": _split_name(a), "step": run.state.get("step"), **res}, line)


def _progress(a: argparse.Namespace) -> dict:
    # a bar on stderr for a person watching; none under --json, whose output a program reads
    return {"progress": not a.json}


def _split_name(a: argparse.Namespace) -> str:
    return "validation" if a.split == "val" else a.split


def _report_eval(a: argparse.Namespace, res: dict, line: str) -> int:
    """``archlab eval``'s result: one JSON object with ``--json``, else ``line`` filled in."""
    print(json.dumps(res) if a.json else line.format(**res))
    return 0


def _cmd_generate(a: argparse.Namespace) -> int:
    import torch

    from archlab.models import generate
    from archlab.models.generation import check_sampling
    from archlab.train.run import load_run

    # before the run is loaded: a typo in a flag costs nothing
    check_sampling(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                   flags=True)
    prompt = unescape(a.prompt)
    stop_texts = [unescape(s) for s in a.stop or []]
    if not prompt.strip():
        raise ConfigError("--prompt: must not be empty")
    if any(not s for s in stop_texts):
        raise ConfigError("--stop: must not be empty (leave --stop out to generate --max-new-tokens tokens)")
    run = load_run(a.run)
    from archlab.train.objectives import objective_for

    if objective_for(run.cfg).inputs != "tokens":
        raise ConfigError(f"generate: {a.run} is a speech recogniser (it reads audio, not a prompt); "
                          f"transcribe audio with: archlab transcribe {a.run} FILE...")
    tok = run.tokenizer
    ids = tok.encode(prompt)
    g = torch.Generator().manual_seed(a.seed)
    stops = [tok.encode(s) for s in stop_texts]
    out = generate(run.model, torch.tensor([ids]), max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                   top_k=a.top_k, top_p=a.top_p, stop=stops, generator=g, use_cache=not a.no_cache)
    new = out[0, len(ids):].tolist()
    for s in stops:  # the stop sequence ends the text and is not shown
        if s and new[-len(s):] == s:
            new = new[: -len(s)]
            break
    sep = " " if getattr(tok, "name", "") == "task_vocab" and new else ""  # a task's word vocabulary
    print(prompt + sep + tok.decode(new))
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from archlab.lab.info import describe

    # a config without a budget is still a model to describe
    print(describe(_config(a, require_budget=False), full=a.full))
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    import importlib

    module, func, _ = BENCHES[a.what]
    return getattr(importlib.import_module(module), func)(a.rest, mode=a.what)


def _cmd_compare(a: argparse.Namespace) -> int:
    from archlab.lab.compare import run_compare
    from archlab.lab.report import summary_table_md

    command = _command_line()
    results = run_compare(a.experiment, a.out, command=command, progress=not a.no_progress,
                          report=not a.no_report, rerun_stale=a.rerun_stale, jobs=a.jobs)
    print()
    print(summary_table_md(results))
    if not a.no_report:
        print(f"\nreport: {Path(a.out) / 'report.html'} (and report.md)")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from archlab.lab.report import load_results, missing_runs, rebuild

    paths = rebuild(a.dir)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    results = load_results(a.dir)
    missing = missing_runs(results)
    if missing:
        exp = results.get("experiment", {})
        planned = len(exp.get("variants") or {}) * len(exp.get("seeds", []))
        print(f"partial: {len(missing)} of {planned} planned runs have no result ({', '.join(missing[:6])}"
              f"{' …' if len(missing) > 6 else ''}); re-run archlab compare to finish them")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    try:
        from archlab.hf.export import export_run
    except ImportError as e:  # archlab.hf says what is missing and how to install it, in one line
        raise ConfigError(f"export --hf: {e}") from e

    print(f"wrote {export_run(a.run, a.hf)}")
    return 0


def _cmd_transcribe(a: argparse.Namespace) -> int:
    for k in ("batch", "beams"):
        if getattr(a, k) < 1:
            raise ConfigError(f"--{k}: must be ≥ 1, got {getattr(a, k)}")
    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be ≥ 1, got {a.max_new_tokens}")
    run_folder = (Path(a.model) / "config.yaml").is_file()
    if run_folder:  # a training run (family echo or whisper): archlab's greedy decoder
        from archlab.train.objectives import objective_for
        from archlab.train.objectives.speech import transcribe_run
        from archlab.train.run import load_run

        if a.beams != 1:
            raise ConfigError("--beams: a run folder decodes greedily (1); export it (archlab export --hf) for beams")
        run = load_run(a.model)
        if objective_for(run.cfg).inputs != "audio":
            raise ConfigError(f"transcribe: {a.model} is not a speech run (data.corpus is '{run.cfg.data.corpus}')")
    else:
        try:
            import archlab.hf  # noqa: F401  (registers Echo with the Auto classes)
            from archlab.hf.echo_processing import transcribe_files
        except ImportError as e:
            raise ConfigError(f"transcribe: {e}") from e
    bad: list[str] = []

    def report(line: str) -> None:
        bad.append(line)
        print(f"archlab: error: {line}", file=sys.stderr)

    bar = None
    if not a.no_progress and len(a.files) > 1 and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(a.files), unit="file", file=sys.stderr)
    tick = bar.update if bar is not None else None
    if run_folder:
        results = transcribe_run(run, a.files, batch=a.batch, max_new_tokens=a.max_new_tokens, on_error=report,
                                 progress=tick)
    else:
        results = transcribe_files(a.model, a.files, batch=a.batch, max_new_tokens=a.max_new_tokens,
                                   num_beams=a.beams, on_error=report, progress=tick)
    if bar is not None:
        bar.close()
    if a.json:
        print(json.dumps({"transcripts": results, "errors": bad}, indent=2))
    else:
        for r in results:
            print(f"{r['file']}\t{r['text']}")
    return 2 if bad else 0


def _command_line() -> str | None:
    return " ".join(["archlab", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("archlab") else None


def _cmd_sae_train(a: argparse.Namespace) -> int:
    from archlab.analysis.sae_train import SAETrainer, parse_sae_config

    cfg = parse_sae_config({"site": a.site}, a.set)  # every setting checked before the run is opened
    from archlab.train.run import load_run

    run = load_run(a.run)
    summary = SAETrainer(run, a.run, cfg, a.out, resume=a.resume, progress=not a.no_progress).fit()
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_sae_report(a: argparse.Namespace) -> int:
    from archlab.analysis.sae_report import write_sae_report

    _positive(a, "max_tokens", "latents", "contexts")
    res = write_sae_report(a.dir, run_path=a.run, max_tokens=a.max_tokens, top_latents=a.latents,
                           contexts=a.contexts, command=_command_line())
    print(f"{res['site']}: explained variance {res['explained_variance']:.4f}  L0 {res['l0']:.1f}  "
          f"alive {res['alive_fraction']:.3f}  loss clean {res['loss_clean']:.4f} / SAE {res['loss_sae']:.4f} / "
          f"zero {res['loss_zero']:.4f}  recovered {res['fraction_recovered']:.4f}")
    print(f"report: {Path(a.dir) / 'report.html'} (and report.json)")
    return 0


def _cmd_sae_sites(a: argparse.Namespace) -> int:
    from archlab.models.capture import sites
    from archlab.train.run import load_run

    print("\n".join(sites(load_run(a.run).model)))
    return 0


def _cmd_redshift(a: argparse.Namespace) -> int:
    from archlab.analysis.redshift import parse_sweep, rebuild_redshift, run_redshift

    if a.rebuild:
        if a.sweep or a.set:
            raise ConfigError("--rebuild: recomputes the report from DIR/results.json; it takes no --sweep or --set")
        res = rebuild_redshift(a.out, command=_command_line())
    else:
        sweep = parse_sweep(a.sweep, a.set)
        res = run_redshift(sweep, a.out, command=_command_line(), progress=not a.no_progress)
    for line in res["findings_lines"]:
        print(line)
    print(f"report: {Path(a.out) / 'report.html'} (and report.md, results.json, plots)")
    return 0


def _cmd_compress(a: argparse.Namespace) -> int:
    from archlab.codec import is_compressed
    from archlab.train.checkpoint import COMPRESSED, compress_checkpoint
    from archlab.train.run import resolve_checkpoint

    src = resolve_checkpoint(a.run)
    if is_compressed(src):
        raise ConfigError(f"compress: {src} is compressed already (archlab decompress undoes it)")
    out = Path(a.out) if a.out else src.parent / COMPRESSED
    if out.resolve() == src.resolve():
        raise ConfigError("--out: would overwrite the checkpoint it compresses; choose another file")
    sizes = compress_checkpoint(src, out, codec=a.codec)
    raw, packed = sizes["raw_bytes"], sizes["compressed_bytes"]
    print(f"wrote {out}: {packed:,} bytes for {raw:,} bytes of tensors ({100 * packed / max(raw, 1):.1f} %, "
          f"codec {a.codec}); {src} is kept (delete it to save the space: runs load either)")
    return 0


def _cmd_decompress(a: argparse.Namespace) -> int:
    from archlab.codec import is_compressed
    from archlab.train.checkpoint import CHECKPOINT, COMPRESSED, decompress_checkpoint

    src = Path(a.file)
    if src.is_dir():
        src = src / COMPRESSED
    if not src.is_file():
        raise ConfigError(f"decompress: {src} not found")
    if not is_compressed(src):
        raise ConfigError(f"decompress: {src} is not an archlab compressed checkpoint")
    out = Path(a.out) if a.out else src.parent / CHECKPOINT
    if out.exists() and not a.force:
        raise ConfigError(f"--out: {out} exists; pass --force to replace it or choose another file")
    print(f"wrote {decompress_checkpoint(src, out)}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from archlab.lab.demo import run_demo

    return run_demo(out=a.out)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="archlab", description="A laboratory for transformer architecture ideas.",
                       epilog="A mistake in a config or an argument is one line on stderr and exit code 2\n"
                              "(ARCHLAB_TRACEBACK=1 shows the traceback instead). 'archlab COMMAND --help'\n"
                              "describes each command, with examples.")
    p.add_argument("--version", action="version", version=f"archlab {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, *examples: str, description: str | None = None) -> ArgumentParser:
        return sub.add_parser(name, help=summary, description=description or summary, epilog=_examples(*examples))

    def overrides(sp: argparse.ArgumentParser, example: str = "model.position.kind=alibi") -> None:
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a setting (YAML), e.g. --set {example}; repeatable")

    sp = command("train", "train a model from a YAML config",
                 "archlab train configs/lm.yaml --out runs/lm",
                 "archlab train configs/lm.yaml --out runs/lm --set model.position.kind=alibi --set train.steps=500",
                 "archlab train configs/lm.yaml --out runs/lm --resume      # continue where it stopped",
                 "archlab train configs/lm.yaml --out runs/lm --dry-run     # resolved config, size, budget")
    sp.add_argument("config", help="YAML config (see configs/)")
    sp.add_argument("--out", required=True, help="run folder: config.yaml, metrics.jsonl, checkpoint, summary")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    sp.add_argument("--dry-run", action="store_true",
                    help="print the resolved config, parameters, tokens per step and budget; train nothing, "
                         "create nothing")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    overrides(sp)
    sp.set_defaults(func=_cmd_train)

    sp = command("transcribe", "transcribe audio files with a speech run or an Echo model folder",
                 "archlab transcribe runs/echo a.wav b.flac             # a run of family echo or whisper",
                 "archlab transcribe models/echo a.wav b.flac",
                 "archlab transcribe models/echo clips/*.wav --json --beams 4")
    sp.add_argument("model", help="a speech run folder (archlab train on data.corpus speech), or an Echo folder: "
                                  "weights, tokenizer and feature extractor (hf.echo_processing.save_echo)")
    sp.add_argument("files", nargs="+", help="audio files (WAV, FLAC, OGG; any rate, resampled to 16 kHz)")
    sp.add_argument("--json", action="store_true", help="machine output: transcripts and errors as JSON")
    sp.add_argument("--batch", type=int, default=8, help="files per forward pass")
    sp.add_argument("--beams", type=int, default=1, help="beam search width (1: greedy)")
    sp.add_argument("--max-new-tokens", type=int, default=None, help="default: the decoder's context")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_transcribe)

    sp = command("eval", "evaluate a run or checkpoint on a held-out split",
                 "archlab eval runs/lm                      # test split, whole",
                 "archlab eval runs/lm --split validation --max-tokens 100000 --json",
                 "archlab eval runs/counting --split ood_long   # a task run's out-of-distribution split")
    sp.add_argument("run", help="run folder, checkpoint file, or a folder written by archlab export --hf")
    sp.add_argument("--split", default="test",
                    help="train, validation (val) or test; a task run also takes its OOD splits (ood_*)")
    sp.add_argument("--max-tokens", type=int, default=None, help="score only the first N targets (default: all)")
    sp.add_argument("--seq-len", type=int, default=None, help="window length (default: the training length)")
    sp.add_argument("--batch", type=int, default=16, help="windows (or task examples) per forward pass")
    sp.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")
    sp.set_defaults(func=_cmd_eval)

    sp = command("generate", "sample text from a run (KV-cached)",
                 'archlab generate runs/lm --prompt "def " --temperature 0.8 --top-p 0.95 --stop "\\n\\n"',
                 'archlab generate runs/lm --prompt "import " --temperature 0 --max-new-tokens 50   # greedy')
    sp.add_argument("run", help="run folder, checkpoint file, or a folder written by archlab export --hf")
    sp.add_argument("--prompt", required=True,
                    help=r"text to continue; \n, \t, \r and \\ stand for newline, tab, return, backslash")
    sp.add_argument("--max-new-tokens", type=int, default=200,
                    help="tokens to generate at most (0: print the prompt only)")
    sp.add_argument("--temperature", type=float, default=0.8, help="sampling temperature ≥ 0; 0 = greedy")
    sp.add_argument("--top-k", type=int, default=None,
                    help="sample among the K most likely tokens only, K ≥ 1 (default: all)")
    sp.add_argument("--top-p", type=float, default=None,
                    help="sample from the smallest set of tokens with probability ≥ P, P in (0, 1] (default: all)")
    sp.add_argument("--stop", action="append",
                    help=r"stop when this text is produced, not shown (repeatable); \n etc. as in --prompt")
    sp.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    sp.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slow; a check)")
    sp.set_defaults(func=_cmd_generate)

    sp = command("info", "parameter count, FLOPs per token, budget and the layer table of a config",
                 "archlab info configs/lm.yaml",
                 "archlab info configs/lm.yaml --set model.depth=12 --full   # and the resolved config")
    sp.add_argument("config", nargs="?", default=None, help="YAML config (default: the built-in defaults)")
    sp.add_argument("--full", action="store_true", help="also print the resolved config (every default filled in)")
    overrides(sp)
    sp.set_defaults(func=_cmd_info)

    width = max(map(len, BENCHES))
    sp = command("bench", "benchmarks; 'archlab bench NAME --help' lists NAME's options",
                 "archlab bench train --out runs/bench/train.json",
                 "archlab bench generate --rounds 3",
                 "archlab bench variants experiments/positional.yaml",
                 description="benchmarks:\n" + "\n".join(f"  {n:<{width}}  {s}" for n, (_, _, s) in BENCHES.items()))
    sp.add_argument("what", choices=list(BENCHES), metavar="NAME", help=f"one of {', '.join(BENCHES)}")
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="that benchmark's options (see NAME --help)")
    sp.set_defaults(func=_cmd_bench)

    sp = command("compare", "train variants × seeds at equal budget; statistics and a report",
                 "archlab compare experiments/quick.yaml --out runs/quick",
                 "archlab compare experiments/positional.yaml --out runs/pos --no-report   # results.json only",
                 "archlab compare experiments/positional.yaml --out runs/pos --jobs 2      # two runs at a time")
    sp.add_argument("experiment", help="experiment YAML (see experiments/)")
    sp.add_argument("--out", required=True, help="experiment folder (re-running skips finished runs and resumes)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--no-report", action="store_true", help="write results.json only, no report or plots")
    sp.add_argument("--rerun-stale", action="store_true",
                    help="train again the finished runs whose settings differ from the experiment's (else refused)")
    sp.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="train N runs at once in worker processes, sharing the cores (one thread each on 2 cores); "
                         "small models finish sooner this way on a CPU (default: 1, in this process)")
    sp.set_defaults(func=_cmd_compare)

    sp = command("report", "rebuild report.md/.html and plots from DIR/results.json",
                 "archlab report runs/quick")
    sp.add_argument("dir", help="experiment folder written by archlab compare (holds results.json)")
    sp.set_defaults(func=_cmd_report)

    sp = command("export", "convert a run to a Hugging Face transformers folder",
                 "archlab export runs/lm --hf out/lm-hf")
    sp.add_argument("run", help="run folder or checkpoint file")
    sp.add_argument("--hf", required=True, metavar="DIR", help="output folder (from_pretrained-loadable)")
    sp.set_defaults(func=_cmd_export)

    sp = command("sae", "sparse autoencoders on a run's activations: train, report, sites",
                 "archlab sae sites runs/lm",
                 "archlab sae train runs/lm --site blocks.1.out --out runs/sae --set k=16 --set tokens=2000000",
                 "archlab sae report runs/sae")
    sae = sp.add_subparsers(dest="sae_command", required=True, metavar="ACTION")
    st = sae.add_parser("train", help="train an SAE on activations streamed from a run's data",
                        description="train a sparse autoencoder on a run's activations at one site; "
                                    "settings with --set (architecture, expansion, k, l1, tokens, lr, ...; "
                                    "see docs/analysis.md)",
                        epilog=_examples("archlab sae train runs/lm --site blocks.1.out --out runs/sae",
                                         "archlab sae train runs/lm --site blocks.0.ffn --out runs/sae-relu "
                                         "--set architecture=relu --set l1=2",
                                         "archlab sae train runs/lm --site blocks.1.out --out runs/sae --resume"))
    st.add_argument("run", help="run folder (or checkpoint / exported HF folder) whose activations are read")
    st.add_argument("--site", required=True, help="where: blocks.N.out (residual stream after block N), "
                                                  "blocks.N.mixer, blocks.N.ffn, final, ...; 'archlab sae sites'")
    st.add_argument("--out", required=True, help="SAE folder: sae.yaml, metrics.jsonl, checkpoint, summary")
    st.add_argument("--resume", action="store_true", help="continue the SAE in --out exactly where it stopped")
    st.add_argument("--no-progress", action="store_true", help="no progress bar")
    overrides(st, "architecture=relu")
    st.set_defaults(func=_cmd_sae_train)
    sr = sae.add_parser("report", help="metrics, spliced-in loss and top-latent contexts of a trained SAE",
                        description="score a trained SAE on the run's validation split; writes report.json and a "
                                    "self-contained report.html into the SAE folder",
                        epilog=_examples("archlab sae report runs/sae", "archlab sae report runs/sae --max-tokens 65536"))
    sr.add_argument("dir", help="SAE folder written by archlab sae train")
    sr.add_argument("--run", default=None, help="the run, if it moved since the SAE was trained")
    sr.add_argument("--max-tokens", type=int, default=None, help="tokens to score (default: the SAE's eval_tokens)")
    sr.add_argument("--latents", type=int, default=12, help="top latents shown with their contexts")
    sr.add_argument("--contexts", type=int, default=8, help="contexts per latent")
    sr.set_defaults(func=_cmd_sae_report)
    ss = sae.add_parser("sites", help="the site names a run's model offers", description="list a run's sites")
    ss.add_argument("run", help="run folder")
    ss.set_defaults(func=_cmd_sae_sites)

    sp = command("redshift", "complexity of the functions random networks compute (Neural Redshift)",
                 "archlab redshift --out runs/redshift",
                 "archlab redshift --out runs/rs --sweep mlp --set seeds=3 --set depths=[1,2,4]",
                 "archlab redshift --out runs/rs --sweep parts",
                 "archlab redshift --out runs/rs --rebuild      # the report again from results.json")
    sp.add_argument("--out", required=True, help="folder: results.json, report.md/.html, plots")
    sp.add_argument("--sweep", action="append", default=None, choices=["mlp", "parts"],
                    help="mlp: activations x weight scale x depth x residual/layer norm; parts: archlab's "
                         "registered positions, mixers, norm placements and residual variants at init "
                         "(repeatable; default: both)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--rebuild", action="store_true",
                    help="recompute the findings, plots and report from --out's results.json (nothing re-run)")
    overrides(sp, "seeds=3")
    sp.set_defaults(func=_cmd_redshift)

    sp = command("compress", "losslessly compress a run's checkpoint (byte planes + zstd, or zipnn)",
                 "archlab compress runs/lm                      # writes runs/lm/checkpoint.archz",
                 "archlab compress runs/lm --out lm.archz --codec zipnn")
    sp.add_argument("run", help="run folder or checkpoint file")
    sp.add_argument("--out", default=None, help="compressed file (default: checkpoint.archz next to the checkpoint)")
    sp.add_argument("--codec", choices=["byteplane", "zipnn"], default="byteplane",
                    help="byteplane: archlab's own (always available); zipnn: the zipnn package (pip install zipnn)")
    sp.set_defaults(func=_cmd_compress)

    sp = command("decompress", "restore a compressed checkpoint to safetensors, bit for bit",
                 "archlab decompress runs/lm                    # runs/lm/checkpoint.archz -> checkpoint.safetensors",
                 "archlab decompress lm.archz --out lm.safetensors")
    sp.add_argument("file", help="a .archz file, or a run folder holding checkpoint.archz")
    sp.add_argument("--out", default=None, help="default: checkpoint.safetensors next to it")
    sp.add_argument("--force", action="store_true", help="replace --out if it exists")
    sp.set_defaults(func=_cmd_decompress)

    sp = command("demo", "the main job: experiments/quick.yaml on the embedded corpus, with its report",
                 "archlab demo", "archlab demo --out runs/mydemo")
    sp.add_argument("--out", default="runs/quick", help="experiment folder")
    sp.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except BaseException as e:  # noqa: BLE001 — sorted by _outcome; a bug is re-raised
        code, line = _outcome(e)
        if code is None or os.environ.get("ARCHLAB_TRACEBACK"):
            raise
        print(f"archlab: {line}", file=sys.stderr)
        return code


def _outcome(e: BaseException) -> tuple[int | None, str]:
    """(exit code, message) for an exception that ends a command normally, or (None, "") for
    one that is a bug and must show its traceback."""
    import zipfile

    import yaml

    from archlab.train.trainer import TrainingStopped

    if isinstance(e, KeyboardInterrupt):  # Ctrl-C, or the trainer's Interrupted after a checkpoint
        signum = getattr(e, "signum", None)
        msg = _first_line(e) if str(e).strip() else ""
        line = msg if msg.startswith("interrupted") else "interrupted" + (f": {msg}" if msg else "")
        return (128 + signum if isinstance(signum, int) else 130), line
    if isinstance(e, TrainingStopped):
        return 1, f"stopped: {_first_line(e)}"
    if isinstance(e, (RecursionError, NotImplementedError)):  # RuntimeErrors that are bugs
        return None, ""
    if isinstance(e, UnicodeDecodeError):
        return 2, f"error: a file is not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return 2, f"error: {e.filename}: {e.strerror}"
    if isinstance(e, yaml.YAMLError):
        problem = getattr(e, "problem", None)
        return 2, f"error: not valid YAML{f' ({problem})' if problem else ''}"
    if isinstance(e, zipfile.BadZipFile):
        return 2, f"error: corrupt zip archive ({_first_line(e)})"
    if isinstance(e, (ValueError, RuntimeError, OSError)):  # ConfigError and CheckpointError included
        return 2, f"error: {_first_line(e)}"
    return None, ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
