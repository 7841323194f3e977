"""Synthetic tasks: generators against their specification, splits, answer-only batches, the
task evaluation, training/resume through the Trainer, and ``archlab compare`` on a task."""

from __future__ import annotations

import json
import random
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archlab.cli import main
from archlab.config import load_config
from archlab.data import load_tokenizer, taskdata
from archlab.data.taskdata import (
    TaskSampler,
    WordTokenizer,
    _pack,
    build_task_data,
)
from archlab.catalog.tasks import (
    BOS,
    PAD,
    STATEMENT_WEIGHTS,
    counting_program,
    draw_statement,
)
from archlab.lab.compare import run_compare
from archlab.lab.experiment import load_experiment
from archlab.models.lm import IGNORE_INDEX, ModelOutput
from archlab.registry import POSITION, ConfigError
from archlab.train import Trainer
from archlab.train.taskeval import evaluate_task
from tests.test_train import straight_and_resumed


def task(kind: str, **knobs):
    """A validated task config through the normal config path."""
    spec = json.dumps({"kind": kind, **knobs})
    return load_config(None, ["data.corpus=task", f"data.task={spec}"], require_budget=False).data.task


def fresh(cfg):
    taskdata._CACHE.clear()  # the in-process cache would hide a non-deterministic generator
    return build_task_data(cfg)


def words(data, split, i):
    ids, ans = data.splits[split].example(i)
    return data.tokenizer.decode(ids).split(), ans


# ------------------------------------------------------------------------------------- counting


def interpret(program: list[str]) -> tuple[int, dict]:
    """Execute ``stmt ; stmt ; ... print v`` independently of the generator; returns the printed
    value and counters, asserting the grammar's rules (increments only of set variables, cap 10)."""
    assert program[-2] == "print"
    body, var = program[:-2], program[-1]
    values: dict[str, int] = {}
    kinds = {"set": 0, "pass": 0, "inc": 0}
    stmts = " ".join(body).split(";")
    assert stmts[-1].strip() == ""  # every statement ends with ';'
    for stmt in stmts[:-1]:
        toks = stmt.split()
        if toks == ["pass"]:
            kinds["pass"] += 1
        elif len(toks) == 3 and toks[1:] == ["=", "0"]:
            values[toks[0]] = 0
            kinds["set"] += 1
        elif len(toks) == 2 and toks[1] == "++":
            assert toks[0] in values, f"increment of unset variable {toks[0]}"
            values[toks[0]] += 1
            assert values[toks[0]] <= 10
            kinds["inc"] += 1
        else:
            raise AssertionError(f"bad statement {stmt!r}")
    assert var in values
    return values[var], {"kinds": kinds, "n": len(stmts) - 1, "max": max(values.values())}


def test_counting_answers_match_an_independent_interpreter():
    cfg = task("counting", vars=3, max_steps=40, train=400, validation=50, test=50)
    data = fresh(cfg)
    assert data.tokenizer.words == ["<pad>", "<bos>", "<sep>", "a", "b", "c", "=", ";", "pass", "++", "print",
                                    *map(str, range(11))]
    counts = []
    for split in ("train", "test"):
        for i in range(len(data.splits[split])):
            w, ans = words(data, split, i)
            assert w[0] == "<bos>" and ans.sum() == 1 and ans[-1]  # nothing trimmed at max_len 512
            value, info = interpret(w[1:-1])
            assert w[-1] == str(value)
            assert set(w) - {"<bos>"} <= set(data.tokenizer.words[3:])
            assert 3 <= info["n"] <= 40
            counts.append(info["n"])
    assert min(counts) <= 6 and max(counts) >= 37  # randint(3, 40) reaches both ends


def test_statement_weights_and_cap():
    r = random.Random(0)
    n = 200_000
    draws = [draw_statement(r) for _ in range(n)]
    total = sum(STATEMENT_WEIGHTS.values())
    for kind, w in STATEMENT_WEIGHTS.items():
        p = w / total
        assert abs(draws.count(kind) / n - p) < 5 * (p * (1 - p) / n) ** 0.5, kind
    assert STATEMENT_WEIGHTS == {"set": 1, "pass": 50, "inc": 7}
    # one variable, long programs: increments pile up to the cap of 10 and never beyond
    highest, kinds = 0, {"set": 0, "pass": 0, "inc": 0}
    for _ in range(300):
        prog, value = counting_program(r, ["a"], lo=100, hi=200)
        got, info = interpret(prog)
        assert got == value
        highest = max(highest, info["max"])
        for k, v in info["kinds"].items():
            kinds[k] += v
    assert highest == 10
    # Redraws reject only increments, so set : pass keeps its 1 : 50; increments fall below 7/58
    # because an increment at the cap is redrawn.
    m = kinds["set"] + kinds["pass"]
    assert abs(kinds["set"] / m - 1 / 51) < 5 * ((1 / 51) * (50 / 51) / m) ** 0.5
    assert 0.03 < kinds["inc"] / sum(kinds.values()) < 7 / 58


def test_counting_left_trim_keeps_the_tail():
    long = task("counting", vars=1, min_steps=100, max_steps=200, max_len=10**6, train=50, validation=5, test=5)
    short = task("counting", vars=1, min_steps=100, max_steps=200, max_len=64, train=50, validation=5, test=5)
    full, cut = fresh(long).splits["train"], fresh(short).splits["train"]
    assert cut.lengths.max() == 64 and (full.lengths > 64).all()
    for i in range(len(cut)):
        a, ans_a = full.example(i)
        b, ans_b = cut.example(i)
        assert np.array_equal(a[-64:], b) and np.array_equal(ans_a[-64:], ans_b)
        assert b[0] != BOS and ans_b.sum() == 1 and ans_b[-1]


def test_counting_ood_splits():
    cfg = task("counting", vars=2, names=4, min_steps=100, max_steps=120, ood_max_steps=140, ood_vars=4, train=300,
               validation=50, test=100)
    data = fresh(cfg)
    assert data.ood == ["ood_long", "ood_vars"] == cfg.ood_splits()
    assert data.tokenizer.words[3:7] == ["a", "b", "c", "d"]
    used = {split: [] for split in data.splits}
    for split, sp in data.splits.items():
        for i in range(len(sp)):
            w, _ = words(data, split, i)
            value, info = interpret(w[1:-1])
            assert w[-1] == str(value)
            n = info["n"]
            assert (121 <= n <= 140) if split == "ood_long" else (100 <= n <= 120)
            used[split].append({x for x in w if x in "abcd"})
    assert max(len(u) for u in used["train"]) <= 2  # two names per training program, from a pool of four
    assert set().union(*used["train"]) == set("abcd")
    assert max(len(u) for u in used["ood_vars"]) > 2


# ---------------------------------------------------------------------- selective copy, flip-flop


def test_selective_copy_properties():
    cfg = task("selective_copy", symbols=8, tokens=6, blanks=10, ood_dense=3, ood_sparse=20, train=200,
               validation=50, test=50)
    data = fresh(cfg)
    for split, blanks in (("train", 10), ("test", 10), ("ood_dense", 3), ("ood_sparse", 20)):
        sp = data.splits[split]
        assert (sp.lengths == 1 + 6 + blanks + 1 + 6).all()
        for i in range(len(sp)):
            w, ans = words(data, split, i)
            context, answer = w[1:w.index("<sep>")], w[w.index("<sep>") + 1:]
            assert context.count("_") == blanks and len(context) == 6 + blanks
            assert answer == [x for x in context if x != "_"]
            assert np.flatnonzero(ans).tolist() == list(range(len(w) - 6, len(w)))


def test_flipflop_properties():
    cfg = task("flipflop", length=64, p=0.8, ood_dense_p=0.1, ood_sparse_p=0.98, train=400, validation=50,
               test=400)
    data = fresh(cfg)
    for split, p in (("train", 0.8), ("ood_dense", 0.1), ("ood_sparse", 0.98)):
        sp = data.splits[split]
        ignores = writes = reads = 0
        for i in range(len(sp)):
            w, ans = words(data, split, i)
            assert w[0] == "<bos>" and len(w) == 129
            ops, bits = w[1::2], w[2::2]
            assert ops[0] == "w" and ops[-1] == "r" and set(bits) <= {"0", "1"}
            last = None
            for j, (op, bit) in enumerate(zip(ops, bits)):
                if op == "w":
                    last = bit
                elif op == "r":
                    assert bit == last  # a read returns the last written bit
                assert ans[2 + 2 * j] == (op == "r")  # the answers are exactly the bits after r
            assert ans[1::2].sum() == 0
            middle = ops[1:-1]
            ignores, writes, reads = ignores + middle.count("i"), writes + middle.count("w"), reads + middle.count("r")
        total = ignores + writes + reads
        assert abs(ignores / total - p) < 5 * (p * (1 - p) / total) ** 0.5 + 1e-9, split
        if p < 0.95:
            assert abs(writes - reads) < 5 * ((writes + reads) / 4) ** 0.5


def test_assoc_recall_properties():
    data = fresh(task("assoc_recall", pairs=4, keys=8, values=5, ood_pairs=8, train=100, validation=20, test=20))
    for split, m in (("train", 4), ("ood_long", 8)):
        for i in range(len(data.splits[split])):
            w, ans = words(data, split, i)
            keys, vals = w[1:2 * m + 1:2], w[2:2 * m + 2:2]
            assert len(set(keys)) == m and w[-3] == "<sep>"
            assert w[-1] == dict(zip(keys, vals))[w[-2]] and np.flatnonzero(ans).tolist() == [len(w) - 1]


# ----------------------------------------------------------------------- splits, batches, tokenizer


@pytest.mark.parametrize("kind, knobs", [
    ("counting", {"vars": 1, "max_steps": 10}),
    ("selective_copy", {"tokens": 3, "blanks": 3, "symbols": 4, "ood_dense": 1, "ood_sparse": 5}),
    ("flipflop", {"length": 8}),
    ("assoc_recall", {"pairs": 2, "keys": 6, "values": 3, "ood_pairs": 3}),
])
def test_deterministic_and_held_out_distinct(kind, knobs):
    cfg = task(kind, train=500, validation=100, test=100, **knobs)
    a, b = fresh(cfg), fresh(cfg)
    assert list(a.splits) == ["train", "validation", "test", *cfg.ood_splits()]
    for s in a.splits:
        assert np.array_equal(a.splits[s].tokens, b.splits[s].tokens)
        assert np.array_equal(a.splits[s].answer, b.splits[s].answer)
    other = fresh(task(kind, train=500, validation=100, test=100, seed=1, **knobs))
    assert not np.array_equal(a.splits["train"].tokens, other.splits["train"].tokens)
    seen = set()
    for s, sp in a.splits.items():  # small spaces force redraws: still no held-out example seen before
        keys = {sp.example(i)[0].tobytes() for i in range(len(sp))}
        assert s == "train" or not keys & seen, s
        seen |= keys
        assert len(sp) == getattr(cfg, s if s in ("train", "validation") else "test")


def test_too_small_a_space_is_refused():
    with pytest.raises(ConfigError, match="could not draw 100 'validation' examples"):
        fresh(task("assoc_recall", pairs=1, keys=2, values=2, ood_pairs=None, train=50, validation=100, test=10))


def test_batches_are_answer_only_and_right_padded():
    data = fresh(task("counting", vars=2, max_steps=30, train=64, validation=8, test=8))
    sp = data.splits["train"]
    sampler = TaskSampler(sp, width=140, batch_size=8, seed=3, ignore_index=IGNORE_INDEX)
    x, y = sampler.batch(5)
    assert x.shape == y.shape == (8, 140)
    idx = sampler.global_indices(5)
    for row, i in enumerate(idx):
        ids, _ = sp.example(i)
        n = len(ids)
        assert torch.equal(x[row, :n], torch.tensor(ids))  # the answer is also an input (its target is padding)
        assert (x[row, n:] == PAD).all()
        counted = (y[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert counted == [n - 2] and y[row, n - 2] == ids[-1]  # the one answer, predicted from "print v"
    assert torch.equal(sampler.batch(5)[0], x)  # a pure function of the step
    assert not torch.equal(sampler.batch(6)[0], x)
    halves = [TaskSampler(sp, width=140, batch_size=8, seed=3, ignore_index=IGNORE_INDEX, rank=r, world_size=2)
              .batch(5)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), x)  # ranks split the global batch
    with pytest.raises(ValueError, match="shorter than the longest input"):
        TaskSampler(sp, width=10, batch_size=8, seed=3, ignore_index=IGNORE_INDEX)


def test_word_tokenizer_round_trip(tmp_path):
    tok = WordTokenizer(["<pad>", "w", "r", "0"], task="flipflop")
    assert tok.decode(tok.encode("w 0 r 0")) == "w 0 r 0"
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, WordTokenizer) and back.fingerprint() == tok.fingerprint() and back.unit == "token"
    with pytest.raises(ValueError, match="unknown word 'x'"):
        tok.encode("w x")


@pytest.mark.parametrize("kind", POSITION.kinds())
def test_right_padding_never_changes_real_positions(kind, tiny_config, build):
    """Why the tasks pad on the right: causal attention keeps every real position's output
    independent of the padding after it, whatever the positional scheme."""
    model = build(tiny_config(**{"model.position.kind": kind}), double=True)
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([ids, torch.full((1, 9), PAD)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded).logits[:, :12], model(ids).logits, atol=1e-10, rtol=0)


# -------------------------------------------------------------------------------- evaluation


class NextPlusOne(torch.nn.Module):
    """Predicts token id + 1 at every position (a fixed, hand-checkable 'model')."""

    def forward(self, x):
        return ModelOutput(logits=F.one_hot(x + 1, 16).double() * 5.0)


def test_task_metrics_on_a_hand_made_case():
    # Answers marked by A: ex0 "1 2 3A" (right: 2->3), ex1 "4 5A 7A" (5 right, 7 wrong), ex2 "8 9A" (right)
    seqs = [np.array([1, 2, 3]), np.array([4, 5, 7]), np.array([8, 9])]
    masks = [np.array([0, 0, 1], bool), np.array([0, 1, 1], bool), np.array([0, 1], bool)]
    split = _pack("test", seqs, masks)
    assert split.tokens[2, 2] == PAD and split.max_input_len == 2
    res = evaluate_task(NextPlusOne(), split, batch_size=2)
    assert res["examples"] == 3 and res["answer_tokens"] == 4
    assert res["error"] == pytest.approx(1 / 3) and res["token_error"] == pytest.approx(1 / 4)
    lp_right, lp_wrong = F.log_softmax(torch.tensor([5.0] + [0.0] * 15, dtype=torch.float64), 0)[[0, 1]]
    assert res["loss"] == pytest.approx(-(3 * lp_right + lp_wrong).item() / 4)
    assert evaluate_task(NextPlusOne(), split, batch_size=3, max_examples=1)["error"] == 0.0


# ------------------------------------------------------------------------------- training


def tiny_task(tmp_path, *extra):
    return load_config(None, [
        "model.dim=32", "model.depth=2", "model.heads=4", "model.max_seq_len=64", "data.corpus=task",
        'data.task={kind: flipflop, length: 12, train: 300, validation: 40, test: 40, ood_dense_p: 0.3}',
        "train.steps=12", "train.batch=8", "train.seq_len=24", "train.eval_every=6", "train.eval_tokens=240",
        "train.log_every=3", "train.ckpt_every=6", "train.warmup=2", "train.tensorboard=false", *extra,
    ])


def test_trainer_loss_is_answer_only(tmp_path):
    tr = Trainer(tiny_task(tmp_path), tmp_path / "r", progress=False)
    sp, idx = tr.streams["train"], tr.sampler.global_indices(0)
    terms, full = [], []
    with torch.no_grad():
        for i in idx:  # one example at a time, unpadded: the answer bits after each r
            ids, ans = sp.example(i)
            logp = F.log_softmax(tr.model(torch.tensor(ids[None, :-1])).logits[0].double(), -1)
            terms += [-logp[j - 1, ids[j]] for j in np.flatnonzero(ans)]
            full += [-logp[j - 1, ids[j]] for j in range(1, len(ids))]
    rec = tr.train_step(0)
    assert rec["loss"] == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    assert abs(rec["loss"] - float(torch.stack(full).mean())) > 1e-3  # not the all-token loss


def test_task_run_metrics_summary_and_cli(tmp_path, capsys):
    summary = Trainer(tiny_task(tmp_path), tmp_path / "r", progress=False).fit()
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert {"val_error", "val_token_error"} <= set(evals[-1]) and "val_bpb" not in evals[-1]
    assert summary["final_val_error"] == evals[-1]["val_error"] and summary["unit"] == "token"
    assert 0.0 <= summary["final_val_token_error"] <= 1.0 and "final_val_bpb" not in summary
    assert json.loads((tmp_path / "r" / "tokenizer.json").read_text())["kind"] == "task_vocab"
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r"), "--split", "ood_dense", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "ood_dense" and res["examples"] == 40 and 0 <= res["error"] <= 1
    assert main(["eval", str(tmp_path / "r"), "--split", "ood_long"]) == 2
    assert "allowed: train, validation, test, ood_dense" in capsys.readouterr().err


def test_task_resume_is_exact(tmp_path):
    straight_and_resumed(tiny_task(tmp_path), tmp_path, kill_at=6)


@pytest.mark.parametrize("sets, needle", [
    (["train.seq_len=16"], "train.seq_len: 16 is shorter than the longest 'flipflop' training input (24 tokens)"),
    (["model.max_seq_len=20", "train.seq_len=20", "data.task.length=10"], None),
])
def test_length_checks(tmp_path, sets, needle):
    cfg = tiny_task(tmp_path, *sets)
    if needle is None:
        Trainer(cfg, tmp_path / "ok", progress=False)
        return
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Trainer(cfg, tmp_path / "r", progress=False)


@pytest.mark.parametrize("sets, needle", [
    (["data.corpus=task"], "data.task: required for corpus 'task'"),
    (["data.task.kind=counting"], "data.task: only used with data.corpus: task"),
    (["data.corpus=task", "data.task.kind=sorting"], "unknown task kind 'sorting'"),
    (["data.corpus=task", "data.task={kind: counting, ood_max_steps: 100}"], "ood_max_steps: must exceed max_steps"),
    (["data.corpus=task", "data.task={kind: selective_copy, ood_dense: 200}"], "ood_dense: must be fewer blanks"),
    (["data.corpus=task", "data.task={kind: flipflop, p: 1.5}"], "data.task.p: an ignore probability"),
    (["data.corpus=task", "data.task.kind=flipflop", "data.tokenizer=bpe"], "data.tokenizer / data.path"),
    (["data.corpus=task", "data.task={kind: counting, colour: 1}"], "data.task.colour: unknown key"),
])
def test_config_errors_are_one_line(sets, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(None, sets)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------- the lab


def write_task_exp(tmp_path, extra=""):
    (tmp_path / "base.yaml").write_text(textwrap.dedent("""\
        model: {dim: 32, depth: 1, heads: 4, max_seq_len: 64}
        data:
          corpus: task
          task: {kind: flipflop, length: 10, train: 200, validation: 30, test: 30, ood_sparse_p: null}
        train: {batch: 8, seq_len: 20, warmup: 1, eval_every: 2, eval_tokens: 200, log_every: 1, tensorboard: false}
        """))
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: t
        base: {tmp_path / 'base.yaml'}
        budget: {{steps: 3}}
        seeds: [0, 1]
        baseline: rope
        eval: {{split: test}}
        """) + extra + "variants:\n  rope: {}\n  learned: {model.position.kind: learned}\n")
    return p


def test_task_experiment_metrics(tmp_path):
    exp = load_experiment(write_task_exp(tmp_path, "also: [error@ood_dense, token_error]\n"))
    assert exp.metric == "error" and exp.eval_max_tokens is None
    assert exp.metric_names() == ["error", "token_error", "loss", "error@ood_dense", "token_error@ood_dense",
                                  "loss@ood_dense"]
    for extra, needle in [("metric: bpb\n", "unknown metric 'bpb'; allowed: error, token_error, loss, error@ood_dense"),
                          ("also: [error@ood_sparse]\n", "unknown metric 'error@ood_sparse'")]:
        with pytest.raises(ConfigError, match=needle):
            load_experiment(write_task_exp(tmp_path, extra))
    bad = write_task_exp(tmp_path)
    bad.write_text(bad.read_text().replace("eval: {split: test}", "eval: {split: test, max_tokens: 100}"))
    with pytest.raises(ConfigError, match="eval.max_tokens: not used by a task experiment"):
        load_experiment(bad)
    bad.write_text(bad.read_text().replace("max_tokens: 100}", "}").replace("rope: {}", "rope: {model.max_seq_len: 12}"))
    with pytest.raises(ConfigError, match="variants.rope: model.max_seq_len: 12 is shorter"):
        load_experiment(bad)


def test_compare_on_a_task(tmp_path):
    res = run_compare(write_task_exp(tmp_path, "also: [error@ood_dense]\n"), tmp_path / "out", progress=False,
                      log=lambda s: None)
    assert len(res["runs"]) == 4
    for r in res["runs"]:
        assert r["status"] == "done" and r["examples"] == 30 and r["examples@ood_dense"] == 30
        for m in ("error", "token_error", "loss", "error@ood_dense", "token_error@ood_dense", "loss@ood_dense"):
            assert np.isfinite(r[m]) and r[m] >= 0, m
        assert r["curve"] and "val_error" in r["curve"][-1]
    assert res["variants"]["rope"]["metric"] == "error" and set(res["also"]) == {"error@ood_dense"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "error mean ± std" in md and "Also measured: error@ood_dense" in md
