"""Next-token language modelling on a text corpus: bits per byte, exact for any tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from archlab.data import WindowSampler, check_streams, iter_texts, make_tokenizer, prepare_corpus
from archlab.registry import ConfigError
from archlab.train.evaluate import evaluate, token_byte_lengths
from archlab.train.objectives.base import Objective


class LMObjective(Objective):
    kind = "lm"
    val_metrics = ("loss", "bpb", "bits_per_token")
    primary = "bpb"

    def handles(self, data_cfg) -> bool:
        return data_cfg.corpus in ("stdlib", "path", "enwik8")

    def tokenizer_kind(self, cfg) -> str:
        return cfg.data.tokenizer

    def new_tokenizer(self, cfg, *, log: Callable[[str], None] | None) -> Any:
        if cfg.data.tokenizer == "bytes":
            return make_tokenizer("bytes")
        texts = iter_texts(cfg.data.corpus, "train", path=cfg.data.path)
        return make_tokenizer("bpe", vocab_size=cfg.data.bpe_vocab, train_texts=texts, log=log)

    def can_rebuild_tokenizer(self, cfg) -> bool:
        return cfg.data.tokenizer != "bpe"  # a BPE trained again need not give the ids the weights learnt

    def prepare(self, cfg, tokenizer: Any, run_dir: Path) -> Mapping[str, Any]:
        d = cfg.data
        streams = prepare_corpus(corpus=d.corpus, path=d.path, tokenizer=tokenizer, cache_dir=d.cache_dir)
        check_streams(streams, seq_len=cfg.train.seq_len)  # a split too short for one window: one line, now
        return streams

    def warm_tokens(self, streams: Mapping[str, Any], n: int) -> Any:
        return streams["train"].tokens[:n]

    def sampler(self, train: Any, cfg, *, ignore_index: int, rank: int, world: int) -> Any:
        t = cfg.train
        return WindowSampler(train, seq_len=t.seq_len, batch_size=t.batch, seed=t.seed, rank=rank, world_size=world)

    def evaluate(self, model: Any, split: Any, cfg, *, tokenizer: Any, batch_size: int, limit: int | None,
                 device: Any, autocast: Any) -> dict[str, float]:
        return evaluate(model, split, seq_len=cfg.train.seq_len, batch_size=batch_size, max_tokens=limit,
                        device=device, autocast=autocast,
                        token_bytes=token_byte_lengths(tokenizer))  # exact bytes of the scored targets

    def metric_names(self, exp) -> list[str]:
        names = ["bpb", "loss"]
        for n in exp.eval_seq_lens:
            names += [f"bpb@{n}", f"loss@{n}"]
        return names

    def experiment_metrics(self, exp, trainer) -> tuple[dict[str, Any], dict[str, Any]]:
        """bpb and loss on ``eval.split`` (capped at ``eval.max_tokens``), and ``bpb@n`` /
        ``loss@n`` on the same held-out tokens in windows of each ``eval.seq_lens`` length."""
        t = trainer.cfg.train
        split = trainer.streams[exp.eval_split]
        lengths = token_byte_lengths(trainer.tokenizer)  # bytes of exactly the scored targets (exact bpb)
        ev = evaluate(trainer.model, split, seq_len=t.seq_len, batch_size=trainer.micro,
                      max_tokens=exp.eval_max_tokens, device=trainer.device, autocast=trainer.autocast,
                      token_bytes=lengths)
        extra: dict[str, float] = {}
        for n in exp.eval_seq_lens:  # the same held-out tokens in longer windows (length extrapolation)
            ev_n = evaluate(trainer.model, split, seq_len=n, batch_size=max(1, trainer.micro * t.seq_len // n),
                            max_tokens=exp.eval_max_tokens, device=trainer.device, autocast=trainer.autocast,
                            token_bytes=lengths)
            extra[f"bpb@{n}"], extra[f"loss@{n}"] = ev_n["bpb"], ev_n["loss"]
        return {"bpb": ev["bpb"], "loss": ev["loss"], "eval_tokens": ev["tokens"]}, extra

    def cli_eval(self, run, *, split: str, batch: int, max_tokens: int | None, seq_len: int | None,
                 progress: bool) -> tuple[dict[str, Any], str]:
        from archlab.models.generation import context_limit

        if split not in ("train", "validation", "test"):
            raise ConfigError(f"--split: '{split}'; allowed: train, validation, test")
        limit = context_limit(run.model)
        if seq_len is not None and limit is not None and seq_len > limit:
            raise ConfigError(f"--seq-len: {seq_len} is longer than the model's learned position table "
                              f"(model.max_seq_len {limit}); allowed: 1..{limit}")
        d, t = run.cfg.data, run.cfg.train
        streams = prepare_corpus(corpus=d.corpus, path=d.path, tokenizer=run.tokenizer, cache_dir=d.cache_dir)
        check_streams(streams, seq_len=seq_len or t.seq_len, splits=(split,))
        res = evaluate(run.model, streams[split], seq_len=seq_len or t.seq_len, batch_size=batch,
                       max_tokens=max_tokens, token_bytes=token_byte_lengths(run.tokenizer), progress=progress)
        return res, "{split}: loss {loss:.4f} nats  bpb {bpb:.4f}  ({tokens} tokens, step {step})"
