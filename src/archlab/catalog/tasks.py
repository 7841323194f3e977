"""Synthetic reasoning tasks: counting, selective copy, flip-flop and associative recall.

Each task kind is registered in :data:`TASK` with a dataclass of its knobs (``data.task`` in a
config, used with ``data.corpus: task``). A task knows its word-level vocabulary and, for each
split it offers (``train``, ``validation``, ``test`` and its out-of-distribution ``ood_*``
splits), how many examples to draw and with which generation parameters. Generators are pure:
given a ``numpy.random.Generator`` they return token-id sequences and per-token answer masks
(``True`` where the token is an answer the model is scored on) and do no I/O. Assembling the
splits (seeding, de-duplication, padding) lives in :mod:`archlab.data.taskdata`.

Every sequence starts with ``<bos>`` (counting programs can lose it to left-trimming, as in the
reference code). Ids: ``<pad>`` 0, ``<bos>`` 1, ``<sep>`` 2, then the task's own words in the
order :meth:`TaskConfig.words` lists them — explicit and deterministic, a pure function of the
knobs.

Sources:

* Counting — Golovneva et al. 2024, *Contextual Position Encoding* (arXiv:2405.18719), §counting,
  and the statement grammar of the authors' generator (facebookresearch/RAM, projects/cope):
  ``randint(3, 512)`` statements over the first 1/3/5 letters, drawn with weights
  ``v = 0 ;`` 1 : ``pass ;`` 50 : ``v ++ ;`` 7, an increment only of a variable already set and
  never above 10 (an invalid draw is redrawn), a program with no variable set is drawn again, then
  ``print v`` for a set variable; the answer is its value. The token sequence (answer included)
  is left-trimmed to ``max_len`` = 512 tokens.
* Selective copy — Gu & Dao 2023 (Mamba), as used in the CoPE paper: ``tokens`` data symbols
  scattered at random among ``blanks`` blank tokens; after ``<sep>`` the model must produce the
  data symbols in order. In distribution the blank count is fixed; the OOD splits are denser
  (fewer blanks) and sparser (more).
* Flip-flop — Liu et al. 2023, *Exposing Attention Glitches with Flip-Flop Language Modeling*
  (arXiv:2306.00946): ``length`` instruction–bit pairs; the first instruction is ``w``, the last
  ``r``, the others ``i`` with probability p and ``w`` / ``r`` with (1−p)/2 each (FFL(p)); bits after
  ``w`` and ``i`` are uniform, the bit after ``r`` is the last written bit — the answer.
* Associative recall — key–value pairs with distinct keys, then ``<sep>`` and a query key; the
  answer is its value (Ba et al. 2016; Zoology, Arora et al. 2023).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from archlab.registry import TASK, ConfigError, PartConfig

__all__ = [
    "BOS",
    "PAD",
    "SEP",
    "SPECIALS",
    "STATEMENT_WEIGHTS",
    "TASK",
    "AssocRecallConfig",
    "CountingConfig",
    "Drawn",
    "FlipFlopConfig",
    "SelectiveCopyConfig",
    "TaskConfig",
    "counting_program",
    "draw_statement",
    "trim_left",
]

SPECIALS = ("<pad>", "<bos>", "<sep>")
PAD, BOS, SEP = 0, 1, 2

Drawn = tuple[list[np.ndarray], list[np.ndarray]]  # token-id sequences and their answer masks


@dataclass
class TaskConfig(PartConfig):
    """Knobs every task has: the data seed and the split sizes (OOD splits have ``test`` examples).

    ``seed`` is the *data's* seed, apart from ``train.seed``: every variant and every training
    seed of an experiment sees the same examples, as in the papers (data generated once)."""

    seed: int = 0
    train: int = 10000
    validation: int = 1000
    test: int = 1000

    def words(self) -> list[str]:
        """The task's own words, after the specials (ids 3, 4, ...)."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        return [*SPECIALS, *self.words()]

    def split_specs(self) -> dict[str, tuple[int, dict[str, Any]]]:
        """Split name -> (number of examples, generation parameters), in generation order."""
        raise NotImplementedError

    def draw(self, params: dict[str, Any], n: int, rng: np.random.Generator) -> Drawn:
        """``n`` examples of one split: token-id sequences (int64) and answer masks (bool), from the
        generator registered for this kind."""
        return TASK.build(self, params, n, rng)

    def ood_splits(self) -> list[str]:
        return [s for s in self.split_specs() if s.startswith("ood_")]

    def _base_specs(self, params: dict[str, Any]) -> dict[str, tuple[int, dict[str, Any]]]:
        return {"train": (self.train, params), "validation": (self.validation, params), "test": (self.test, params)}

    def validate(self, where: str) -> None:
        if self.seed < 0:
            raise ConfigError(f"{where}.seed: must be ≥ 0 (a numpy seed), got {self.seed}")
        for name in ("train", "validation", "test"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: the split needs at least one example, got {getattr(self, name)}")

    def _id(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocabulary())}


def _positive(where: str, **values: int | None) -> None:
    for k, v in values.items():
        if v is not None and v <= 0:
            raise ConfigError(f"{where}.{k}: must be positive, got {v}")


# A task's words become the model's vocabulary; the config builds that list to size the
# embedding, so an absurd knob (max_value: 1e15) must be refused before the list is built.
MAX_WORDS = 65536


def _vocabulary_fits(where: str, **counts: int) -> None:
    total = sum(counts.values())
    if total > MAX_WORDS:
        names = " + ".join(counts)
        raise ConfigError(f"{where}.{next(iter(counts))}: {names} = {total} task words; allowed: at most {MAX_WORDS}")


# ------------------------------------------------------------------------------------- counting

# Statement kinds and their sampling weights (the reference generator's OP_WEIGHTS).
STATEMENT_WEIGHTS = {"set": 1, "pass": 50, "inc": 7}
_TOTAL_WEIGHT = sum(STATEMENT_WEIGHTS.values())
_SET_CUT = STATEMENT_WEIGHTS["set"]
_PASS_CUT = _SET_CUT + STATEMENT_WEIGHTS["pass"]


def draw_statement(rng: random.Random) -> str:
    """One statement kind, ``set`` : ``pass`` : ``inc`` with probabilities 1 : 50 : 7 (out of 58)."""
    u = rng.random() * _TOTAL_WEIGHT
    return "set" if u < _SET_CUT else "pass" if u < _PASS_CUT else "inc"


def _below(rng: random.Random, n: int) -> int:
    """Uniform integer in [0, n) from one ``random()`` draw (stable across Python versions)."""
    return int(rng.random() * n)


def counting_program(rng: random.Random, names: list[str], *, lo: int, hi: int,
                     max_value: int = 10) -> tuple[list[str], int]:
    """The words of one program ending in ``print v``, and the value of ``v`` (the answer).

    ``randint(lo, hi)`` statements; each statement's kind is drawn by :func:`draw_statement` and
    redrawn while invalid (an increment with no variable set, or of a variable already at
    ``max_value``). ``set`` picks any of ``names``; ``inc`` and ``print`` pick among the variables
    set so far. A program that ends with no variable set is drawn again from scratch.
    """
    while True:
        n = lo + _below(rng, hi - lo + 1)
        values: dict[str, int] = {}
        words: list[str] = []
        for _ in range(n):
            while True:
                kind = draw_statement(rng)
                if kind == "pass":
                    words += ["pass", ";"]
                    break
                if kind == "set":
                    v = names[_below(rng, len(names))]
                    values[v] = 0
                    words += [v, "=", "0", ";"]
                    break
                if not values:
                    continue
                live = list(values)
                v = live[_below(rng, len(live))]
                if values[v] >= max_value:
                    continue
                values[v] += 1
                words += [v, "++", ";"]
                break
        if values:
            live = list(values)
            v = live[_below(rng, len(live))]
            return words + ["print", v], values[v]


def trim_left(ids: np.ndarray, answer: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last ``max_len`` tokens (the reference collator trims long programs from the left)."""
    return ids[-max_len:], answer[-max_len:]


@dataclass
class CountingConfig(TaskConfig):
    """Counting (CoPE paper): the value a program's ``print v`` prints; one answer token 0..max_value.

    ``vars`` names are available to one program. They are the first ``vars`` letters when
    ``names`` is unset (the paper); with a larger pool (``names``), each program uses ``vars``
    letters drawn from the first ``names``, so that the ``ood_vars`` split (programs over
    ``ood_vars`` names) uses only trained tokens. ``ood_long``: programs of ``max_steps + 1 ..
    ood_max_steps`` statements, same names as training.
    """

    vars: int = 3
    names: int | None = None
    min_steps: int = 3
    max_steps: int = 512
    max_value: int = 10
    max_len: int = 512
    ood_max_steps: int | None = None
    ood_vars: int | None = None

    OPS: ClassVar[tuple[str, ...]] = ("=", ";", "pass", "++", "print")

    def pool(self) -> int:
        return self.names if self.names is not None else self.vars

    def words(self) -> list[str]:
        return [*string.ascii_lowercase[: self.pool()], *self.OPS, *(str(v) for v in range(self.max_value + 1))]

    def split_specs(self) -> dict[str, tuple[int, dict[str, Any]]]:
        base = {"lo": self.min_steps, "hi": self.max_steps, "vars": self.vars}
        out = self._base_specs(base)
        if self.ood_max_steps is not None:
            out["ood_long"] = (self.test, {**base, "lo": self.max_steps + 1, "hi": self.ood_max_steps})
        if self.ood_vars is not None:
            out["ood_vars"] = (self.test, {**base, "vars": self.ood_vars})
        return out

    def validate(self, where: str) -> None:
        super().validate(where)
        _positive(where, vars=self.vars, names=self.names, min_steps=self.min_steps, max_value=self.max_value)
        _vocabulary_fits(where, max_value=self.max_value)
        if self.pool() > 26:
            raise ConfigError(f"{where}.names: at most 26 variable names (a..z), got {self.pool()}")
        if self.vars > self.pool():
            raise ConfigError(f"{where}.vars: {self.vars} exceeds the name pool data.task.names={self.names}")
        if self.max_steps < self.min_steps:
            raise ConfigError(f"{where}.max_steps: must be ≥ min_steps {self.min_steps}, got {self.max_steps}")
        if self.max_len < 2:
            raise ConfigError(f"{where}.max_len: must be ≥ 2 (a question and its answer), got {self.max_len}")
        if self.ood_max_steps is not None and self.ood_max_steps <= self.max_steps:
            raise ConfigError(f"{where}.ood_max_steps: must exceed max_steps {self.max_steps} "
                              f"(longer programs than trained on), got {self.ood_max_steps}")
        if self.ood_vars is not None and not self.vars < self.ood_vars <= self.pool():
            raise ConfigError(f"{where}.ood_vars: must be more than vars {self.vars} and at most the name pool "
                              f"{self.pool()} (set data.task.names to enlarge it), got {self.ood_vars}")


# -------------------------------------------------------------------------------- selective copy


@dataclass
class SelectiveCopyConfig(TaskConfig):
    """Selective copy: ``<bos>`` + ``tokens`` data symbols among ``blanks`` blanks + ``<sep>`` + the
    data symbols in order (the answer). OOD: ``ood_dense`` / ``ood_sparse`` blanks."""

    symbols: int = 16
    tokens: int = 128
    blanks: int = 128
    ood_dense: int | None = 64
    ood_sparse: int | None = 256

    def words(self) -> list[str]:
        return ["_", *(f"s{i}" for i in range(self.symbols))]

    def split_specs(self) -> dict[str, tuple[int, dict[str, Any]]]:
        out = self._base_specs({"blanks": self.blanks})
        if self.ood_dense is not None:
            out["ood_dense"] = (self.test, {"blanks": self.ood_dense})
        if self.ood_sparse is not None:
            out["ood_sparse"] = (self.test, {"blanks": self.ood_sparse})
        return out

    def validate(self, where: str) -> None:
        super().validate(where)
        _positive(where, symbols=self.symbols, tokens=self.tokens)
        _vocabulary_fits(where, symbols=self.symbols)
        for name in ("blanks", "ood_dense", "ood_sparse"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{where}.{name}: a number of blanks must be ≥ 0, got {v}")
        if self.ood_dense is not None and self.ood_dense >= self.blanks:
            raise ConfigError(f"{where}.ood_dense: must be fewer blanks than blanks={self.blanks}, got {self.ood_dense}")
        if self.ood_sparse is not None and self.ood_sparse <= self.blanks:
            raise ConfigError(f"{where}.ood_sparse: must be more blanks than blanks={self.blanks}, got {self.ood_sparse}")


# ------------------------------------------------------------------------------------- flip-flop


@dataclass
class FlipFlopConfig(TaskConfig):
    """Flip-flop language FFL(p) (Liu et al. 2023): ``<bos>`` then ``length`` instruction–bit pairs.
    The answers are the bits after ``r``. Train on FFL(p); OOD dense FFL(ood_dense_p), sparse
    FFL(ood_sparse_p), at the same length."""

    length: int = 256
    p: float = 0.8
    ood_dense_p: float | None = 0.1
    ood_sparse_p: float | None = 0.98

    def words(self) -> list[str]:
        return ["w", "r", "i", "0", "1"]

    def split_specs(self) -> dict[str, tuple[int, dict[str, Any]]]:
        out = self._base_specs({"p": self.p})
        if self.ood_dense_p is not None:
            out["ood_dense"] = (self.test, {"p": self.ood_dense_p})
        if self.ood_sparse_p is not None:
            out["ood_sparse"] = (self.test, {"p": self.ood_sparse_p})
        return out

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.length < 2:
            raise ConfigError(f"{where}.length: at least 2 pairs (a write and a read), got {self.length}")
        for name in ("p", "ood_dense_p", "ood_sparse_p"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{where}.{name}: an ignore probability in [0, 1], got {v}")


# --------------------------------------------------------------------------- associative recall


@dataclass
class AssocRecallConfig(TaskConfig):
    """Associative recall: ``<bos> k1 v1 … kn vn <sep> kq`` -> ``vq``; keys distinct within an
    example. OOD: ``ood_long`` with ``ood_pairs`` pairs."""

    pairs: int = 8
    keys: int = 32
    values: int = 16
    ood_pairs: int | None = 16

    def words(self) -> list[str]:
        return [*(f"k{i}" for i in range(self.keys)), *(f"v{i}" for i in range(self.values))]

    def split_specs(self) -> dict[str, tuple[int, dict[str, Any]]]:
        out = self._base_specs({"pairs": self.pairs})
        if self.ood_pairs is not None:
            out["ood_long"] = (self.test, {"pairs": self.ood_pairs})
        return out

    def validate(self, where: str) -> None:
        super().validate(where)
        _positive(where, pairs=self.pairs, keys=self.keys, values=self.values)
        _vocabulary_fits(where, keys=self.keys, values=self.values)
        if self.pairs > self.keys:
            raise ConfigError(f"{where}.pairs: keys are distinct, so at most keys={self.keys} pairs, got {self.pairs}")
        if self.ood_pairs is not None and not self.pairs < self.ood_pairs <= self.keys:
            raise ConfigError(f"{where}.ood_pairs: must be more than pairs {self.pairs} and at most keys "
                              f"{self.keys}, got {self.ood_pairs}")


# ------------------------------------------------------------------------------- the generators


@TASK.register("counting", CountingConfig, "CoPE counting: the value a program prints")
def _draw_counting(cfg: CountingConfig, params: dict[str, Any], n: int, rng: np.random.Generator) -> Drawn:
    r = random.Random(int(rng.integers(2**62)))  # Python's generator: fast scalar draws
    ids_of, pool = cfg._id(), list(string.ascii_lowercase[: cfg.pool()])
    seqs, masks = [], []
    for _ in range(n):
        names = pool
        if params["vars"] < len(pool):  # a random subset of the pool, kept in pool order (partial Fisher–Yates)
            idx = list(range(len(pool)))
            for i in range(params["vars"]):
                j = i + _below(r, len(idx) - i)
                idx[i], idx[j] = idx[j], idx[i]
            names = [pool[i] for i in sorted(idx[: params["vars"]])]
        words, value = counting_program(r, names, lo=params["lo"], hi=params["hi"], max_value=cfg.max_value)
        ids = np.array([BOS, *(ids_of[w] for w in words), ids_of[str(value)]], dtype=np.int64)
        answer = np.zeros(len(ids), dtype=bool)
        answer[-1] = True
        ids, answer = trim_left(ids, answer, cfg.max_len)
        seqs.append(ids)
        masks.append(answer)
    return seqs, masks


@TASK.register("selective_copy", SelectiveCopyConfig, "copy the non-blank tokens in order")
def _draw_selective_copy(cfg: SelectiveCopyConfig, params: dict[str, Any], n: int, rng: np.random.Generator) -> Drawn:
    k, total = cfg.tokens, cfg.tokens + params["blanks"]
    blank, first = len(SPECIALS), len(SPECIALS) + 1
    data = first + rng.integers(0, cfg.symbols, size=(n, k))
    where = np.sort(np.argsort(rng.random((n, total)), axis=1)[:, :k], axis=1)  # k distinct slots
    context = np.full((n, total), blank, dtype=np.int64)
    np.put_along_axis(context, where, data, axis=1)
    col = np.ones((n, 1), dtype=np.int64)
    seq = np.concatenate([BOS * col, context, SEP * col, data], axis=1)
    answer = np.zeros(seq.shape, dtype=bool)
    answer[:, -k:] = True
    return list(seq), list(answer)


@TASK.register("flipflop", FlipFlopConfig, "flip-flop language: recall the last written bit")
def _draw_flipflop(cfg: FlipFlopConfig, params: dict[str, Any], n: int, rng: np.random.Generator) -> Drawn:
    p, L = params["p"], cfg.length
    w_id = len(SPECIALS)  # words: w r i 0 1, so r = w_id + 1, i = w_id + 2, bits at w_id + 3 + bit
    ops = rng.choice(3, size=(n, L), p=[(1 - p) / 2, (1 - p) / 2, p])  # 0 w, 1 r, 2 i
    ops[:, 0], ops[:, -1] = 0, 1
    bits = rng.integers(0, 2, size=(n, L))
    steps = np.arange(L)
    last_write = np.maximum.accumulate(np.where(ops == 0, steps, -1), axis=1)  # ≥ 0: ops[:, 0] is w
    bits = np.where(ops == 1, np.take_along_axis(bits, last_write, axis=1), bits)
    seq = np.empty((n, 1 + 2 * L), dtype=np.int64)
    seq[:, 0] = BOS
    seq[:, 1::2] = w_id + ops
    seq[:, 2::2] = w_id + 3 + bits
    answer = np.zeros(seq.shape, dtype=bool)
    answer[:, 2::2] = ops == 1
    return list(seq), list(answer)


@TASK.register("assoc_recall", AssocRecallConfig, "associative recall: the value of a queried key")
def _draw_assoc_recall(cfg: AssocRecallConfig, params: dict[str, Any], n: int, rng: np.random.Generator) -> Drawn:
    m, k0 = params["pairs"], len(SPECIALS)
    v0 = k0 + cfg.keys
    keys = k0 + np.argsort(rng.random((n, cfg.keys)), axis=1)[:, :m]
    vals = v0 + rng.integers(0, cfg.values, size=(n, m))
    q = rng.integers(0, m, size=(n, 1))
    seq = np.empty((n, 2 * m + 4), dtype=np.int64)
    seq[:, 0] = BOS
    seq[:, 1:2 * m + 1:2], seq[:, 2:2 * m + 2:2] = keys, vals
    seq[:, -3] = SEP
    seq[:, -2], seq[:, -1] = np.take_along_axis(keys, q, 1)[:, 0], np.take_along_axis(vals, q, 1)[:, 0]
    answer = np.zeros(seq.shape, dtype=bool)
    answer[:, -1] = True
    return list(seq), list(answer)
