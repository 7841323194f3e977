"""Assembled task datasets: seeded splits, padding, training batches and the task's tokenizer.

:func:`build_task_data` turns a task config (:mod:`archlab.catalog.tasks`) into a
:class:`TaskData`: the word tokenizer and one :class:`TaskSplit` per split. Split ``s`` is drawn
from ``numpy.random.default_rng([task.seed, crc32(s)])``, so a split depends on the data seed and
its own name only (changing the test size leaves the training set as it was). Splits are
generated in order (train, validation, test, the OOD splits) and a held-out example whose exact
token sequence already occurs in an earlier split is rejected and redrawn: no test example is a
training example. Within a split duplicates are kept (short counting programs recur).

Padding is on the right with ``<pad>``. Under causal attention a token never sees the tokens
after it, so right padding cannot change any real position's output, needs no attention mask and
no per-row positions, and costs only the padded slots; left padding would need explicit
positions and a mask for every scheme (``LM.forward(..., positions=, mask=)``) for no gain here.
Targets are the next tokens where the answer mask is set and ``ignore_index`` everywhere else
(prompt and padding), so the language-model loss is an answer-only loss.

:class:`TaskSampler` is counter-based like :class:`archlab.data.stream.WindowSampler`: the
examples of step ``s`` are ``default_rng([seed, s]).integers(0, N, batch)``, a pure function of
``(seed, step)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archlab.atomic import write_text_atomic
from archlab.catalog.tasks import PAD, TaskConfig
from archlab.data.examples import ExampleSampler
from archlab.registry import ConfigError, to_dict

__all__ = ["TaskData", "TaskSampler", "TaskSplit", "WordTokenizer", "build_task_data", "check_task_lengths"]

_MAX_DRAWS = 100  # candidates per wanted example before a held-out split is declared impossible to fill


class WordTokenizer:
    """Whitespace word tokenizer over an explicit word list (a task's vocabulary)."""

    name = "task_vocab"
    unit = "token"

    def __init__(self, words: Sequence[str], *, task: str = "") -> None:
        self.words = list(words)
        if len(set(self.words)) != len(self.words):
            raise ValueError("WordTokenizer: duplicate words in the vocabulary")
        self.task = task
        self._id = {w: i for i, w in enumerate(self.words)}
        self.vocab_size = len(self.words)

    def encode(self, text: str) -> list[int]:
        out = []
        for w in text.split():
            if w not in self._id:
                raise ConfigError(f"unknown word '{w}' for the {self.task or 'task'} vocabulary; "
                                  f"allowed: {self._some_words(w)}")
            out.append(self._id[w])
        return out

    def _some_words(self, near: str, shown: int = 12) -> str:
        """A few allowed words for an error line, the closest to ``near`` first: a task's
        vocabulary can be long, and one line should stay readable."""
        close = difflib.get_close_matches(near, self.words, n=3)
        pick = close + [w for w in self.words if w not in close][: max(0, shown - len(close))]
        rest = len(self.words) - len(pick)
        return " ".join(pick) + (f" … ({len(self.words)} words in all)" if rest > 0 else "")

    def decode(self, ids: Any) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return " ".join(self.words[int(i)] for i in ids)

    def fingerprint(self) -> str:
        return "words-" + hashlib.sha256("\n".join(self.words).encode("utf-8")).hexdigest()

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out = d / "tokenizer.json"
        write_text_atomic(out, json.dumps({"kind": "task_vocab", "task": self.task, "words": self.words}) + "\n")
        return out

    @classmethod
    def from_spec(cls, spec: dict, path: Path) -> WordTokenizer:
        words = spec.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{path}: corrupt word tokenizer (expected a list of words)")
        return cls(words, task=str(spec.get("task", "")))

    def __repr__(self) -> str:
        return f"WordTokenizer(task={self.task!r}, vocab_size={self.vocab_size})"


@dataclass
class TaskSplit:
    """One split: ``tokens`` (N, W) int64 right-padded with ``<pad>``, ``answer`` (N, W) bool,
    ``lengths`` (N,). Arrays are read-only (a split may be shared by several runs in a process)."""

    name: str
    tokens: np.ndarray
    answer: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_input_len(self) -> int:
        """The longest model input: a sequence of L tokens is L − 1 inputs (its last token is only a target)."""
        return int(self.lengths.max()) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.lengths[i])
        return self.tokens[i, :n], self.answer[i, :n]

    def batch(self, index: np.ndarray, *, ignore_index: int, width: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``x`` and answer-only targets ``y``, each (len(index), width); ``width``
        defaults to the longest input among the chosen rows."""
        index = np.asarray(index, dtype=np.int64)
        w = int(self.lengths[index].max()) - 1 if width is None else int(width)
        tok, ans = self.tokens[index, : w + 1], self.answer[index, : w + 1]
        if tok.shape[1] < w + 1:  # a width beyond the split's longest: more padding
            extra = w + 1 - tok.shape[1]
            tok = np.pad(tok, ((0, 0), (0, extra)), constant_values=PAD)
            ans = np.pad(ans, ((0, 0), (0, extra)), constant_values=False)
        x = torch.from_numpy(np.ascontiguousarray(tok[:, :-1]))
        y = torch.from_numpy(np.where(ans[:, 1:], tok[:, 1:], ignore_index))
        return x, y


def _pack(name: str, seqs: list[np.ndarray], masks: list[np.ndarray]) -> TaskSplit:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    tokens = np.full((len(seqs), int(lengths.max())), PAD, dtype=np.int64)
    answer = np.zeros(tokens.shape, dtype=bool)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        tokens[i, : len(s)], answer[i, : len(m)] = s, m
    for a in (tokens, answer, lengths):
        a.setflags(write=False)
    return TaskSplit(name=name, tokens=tokens, answer=answer, lengths=lengths)


@dataclass
class TaskData:
    kind: str
    config: TaskConfig
    tokenizer: WordTokenizer
    splits: dict[str, TaskSplit]  # train, validation, test, then the OOD splits

    @property
    def ood(self) -> list[str]:
        return [s for s in self.splits if s.startswith("ood_")]


_CACHE: dict[str, TaskData] = {}


def build_task_data(cfg: TaskConfig) -> TaskData:
    """Every split of the task (cached in-process by the config, so an experiment's runs share one copy)."""
    key = json.dumps(to_dict(cfg), sort_keys=True)
    if key in _CACHE:
        return _CACHE[key]
    seen: set[bytes] = set()
    splits: dict[str, TaskSplit] = {}
    for name, (n, params) in cfg.split_specs().items():
        rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
        seqs: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        tries = 0
        while len(seqs) < n and tries < _MAX_DRAWS * n:
            want = n - len(seqs) if name == "train" else max(n - len(seqs), 64)
            drawn, drawn_masks = cfg.draw(params, want, rng)
            tries += want
            for s, m in zip(drawn, drawn_masks):
                if len(seqs) < n and (name == "train" or s.tobytes() not in seen):
                    seqs.append(s)
                    masks.append(m)
        if len(seqs) < n:
            raise ConfigError(f"data.task: could not draw {n} '{name}' examples unlike those of the earlier splits "
                              f"(only {len(seqs)}); the '{cfg.kind}' task with these knobs has too few distinct "
                              f"sequences — make the examples longer or the splits smaller")
        seen.update(s.tobytes() for s in seqs)
        splits[name] = _pack(name, seqs, masks)
    data = TaskData(kind=cfg.kind, config=cfg, tokenizer=WordTokenizer(cfg.vocabulary(), task=cfg.kind),
                    splits=splits)
    _CACHE[key] = data
    return data


def check_task_lengths(data: TaskData, *, seq_len: int, max_seq_len: int) -> None:
    """Training inputs must fit ``train.seq_len`` (the padded width of a training batch; nothing is
    cut silently) and every split's inputs must fit ``model.max_seq_len`` (a learned position
    table has that many rows; the OOD splits may be longer than training)."""
    train = data.splits["train"].max_input_len
    if train > seq_len:
        raise ConfigError(f"train.seq_len: {seq_len} is shorter than the longest '{data.kind}' training input "
                          f"({train} tokens); raise train.seq_len to at least {train}")
    name, longest = max(((s, sp.max_input_len) for s, sp in data.splits.items()), key=lambda t: t[1])
    if longest > max_seq_len:
        raise ConfigError(f"model.max_seq_len: {max_seq_len} is shorter than the longest input of split "
                          f"'{name}' ({longest} tokens); raise model.max_seq_len to at least {longest}")


class TaskSampler(ExampleSampler):
    """Training batches of a task split: ``batch(step) -> (x, y)``, each (batch // world, width)."""

    def __init__(self, split: TaskSplit, *, width: int, batch_size: int, seed: int, ignore_index: int,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(split, batch_size=batch_size, seed=seed, ignore_index=ignore_index, rank=rank,
                         world_size=world_size)
        if split.max_input_len > width:
            raise ValueError(f"TaskSampler: width {width} is shorter than the longest input {split.max_input_len}")
        self.width = int(width)

    def rows(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.batch(index, width=self.width, ignore_index=self.ignore_index)
