"""The options every benchmark shares, as one parent parser with each benchmark's defaults.

A benchmark's ``main`` builds its own parser with ``parents=[common_options(...)]`` and adds only
what is its own; an option it does not take is left out by passing ``None`` (or ``False``).
"""

from __future__ import annotations

import argparse

from archlab.argparsing import ArgumentParser

_KEEP = object()  # "no default given": the option is left out


def common_options(*, rounds: int | None | object = _KEEP, rounds_help: str | None = None,
                   steps_per_round: int | None = None, warmup: int | None = None, clock: bool = False,
                   max_foreign_cpu: float | None | object = _KEEP, threads: bool = True, seed: bool = True,
                   out: str | None | object = _KEEP, out_help: str | None = None, verbose: bool | str = True,
                   who: str = "contender") -> argparse.ArgumentParser:
    """A parent parser holding the shared options that a benchmark asks for.

    ``who`` names what runs in a round ("contender", "variant") in the help texts; a default of
    ``_KEEP`` (the default) leaves that option out, any other value (``None`` included) is the
    option's default.
    """
    ap = ArgumentParser(add_help=False)
    if rounds is not _KEEP:
        ap.add_argument("--rounds", type=int, default=rounds,
                        help=rounds_help or f"interleaved rounds; every {who} runs once per round")
    if steps_per_round is not None:
        ap.add_argument("--steps-per-round", type=int, default=steps_per_round,
                        help=f"training steps per {who} per round")
    if warmup is not None:
        ap.add_argument("--warmup", type=int, default=warmup, help=f"untimed training steps per {who} first")
    if clock:
        ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (shared machines; use with --threads 1)")
    if max_foreign_cpu is not _KEEP:
        keep = "keep all" if max_foreign_cpu is None else "<0: keep all"
        ap.add_argument("--max-foreign-cpu", type=float, default=max_foreign_cpu,
                        help=f"drop rounds where other processes used more than this fraction of the CPUs ({keep})")
    if threads:
        ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    if seed:
        ap.add_argument("--seed", type=int, default=0, help="seed of the weights and batches")
    if out is not _KEEP:
        ap.add_argument("--out", default=out,
                        help=out_help or ("write the JSON result here" if out else
                                          "write the JSON result here (default: print only)"))
    if verbose:
        ap.add_argument("-v", "--verbose", action="store_true",
                        help=verbose if isinstance(verbose, str) else "print every round")
    return ap
