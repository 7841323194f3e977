"""archlab compare: experiment validation, equal budgets, resumability, results and report."""

from __future__ import annotations

import json
import textwrap

import pytest

from archlab.lab import compare as compare_mod
from archlab.lab.compare import run_compare
from archlab.lab.experiment import load_experiment
from archlab.registry import ConfigError
from tests.test_train import KillAt


def write_exp(tmp_path, corpus_path, variants=None, extra="", budget="steps: 4"):
    variants = variants or "  a: {}\n  b: {model.position.kind: alibi}\n"
    text = textwrap.dedent(f"""\
        name: t
        base: {(tmp_path / 'base.yaml')}
        budget: {{{budget}}}
        seeds: [0, 1]
        baseline: a
        eval: {{split: validation, max_tokens: 256}}
        """) + extra + "variants:\n" + variants
    (tmp_path / "base.yaml").write_text(textwrap.dedent(f"""\
        model: {{dim: 32, depth: 1, heads: 4}}
        data: {{corpus: path, path: {corpus_path}, cache_dir: {tmp_path / 'cache'}}}
        train: {{batch: 4, seq_len: 16, warmup: 1, eval_every: 2, eval_tokens: 128, log_every: 1}}
        """))
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_experiment_budget_is_equal(corpus, tmp_path):  # noqa: F811
    exp = load_experiment(write_exp(tmp_path, corpus, budget="tokens: 1000"))
    shapes = {(c.train.total_steps(), c.train.batch, c.train.seq_len, c.train.tokens) for c in exp.variants.values()}
    assert len(shapes) == 1
    assert exp.config_for("b", 7).train.seed == 7


@pytest.mark.parametrize("variants, extra, budget, needle", [
    ("  a: {}\n  b: {train.tokens: 5}\n", "", "steps: 4", "would change the budget"),
    ("  a: {}\n  b: {train: {batch: 8}}\n", "", "steps: 4", "train.batch"),
    ("  a: {}\n  a: {model.dim: 64}\n", "", "steps: 4", "duplicate key 'a'"),
    ("  a: {}\n  b: {model.bogus: 1}\n", "", "steps: 4", "variants.b: model.bogus: unknown key"),
    ("  a: {}\n", "colour: red\n", "steps: 4", "unknown key 'colour'"),
    ("  a: {}\n", "", "steps: 4, tokens: 100", "exactly one of"),
    ("  b: {}\n", "", "steps: 4", "baseline 'a' is not a variant"),
    ("  a: {}\n  b: {data.corpus: stdlib}\n", "", "steps: 4", "data.corpus"),
    ("  a: {}\n", "metric: accuracy\n", "steps: 4", "unknown metric 'accuracy'; allowed: bpb, loss"),
    ("  a: {}\n", "also: [bpb@512]\n", "steps: 4", "unknown metric 'bpb@512'"),
    ("  a: {}\n", "overrides: {model.max_seq_len: 64}\nalso: [bpb@128]\n", "steps: 4", "unknown metric"),
])
def test_experiment_errors(corpus, tmp_path, variants, extra, budget, needle):  # noqa: F811
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as e:
        load_experiment(write_exp(tmp_path, corpus, variants, extra, budget))
    assert "\n" not in str(e.value)


def test_compare_runs_resumes_and_reports(corpus, tmp_path, monkeypatch):  # noqa: F811
    exp = write_exp(tmp_path, corpus)
    out = tmp_path / "out"
    real = compare_mod.run_one
    calls = []

    def flaky(exp_, variant, seed, run_dir, *, callbacks=(), log=print):
        calls.append((variant, seed))
        if (variant, seed) == ("b", 0) and calls.count(("b", 0)) == 1:
            callbacks = [*callbacks, KillAt(2)]  # dies after step 2 (checkpoint written)
        return real(exp_, variant, seed, run_dir, callbacks=callbacks, log=log)

    monkeypatch.setattr(compare_mod, "run_one", flaky)
    with pytest.raises(Exception):
        run_compare(exp, out, progress=False, log=lambda s: None)
    partial = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in partial["runs"]] == [("a", 0), ("a", 1)]
    a0_metrics = (out / "a" / "seed0" / "metrics.jsonl").read_text()

    res = run_compare(exp, out, progress=False, log=lambda s: None)
    assert calls == [("a", 0), ("a", 1), ("b", 0), ("b", 0), ("b", 1)]  # finished runs skipped
    assert (out / "a" / "seed0" / "metrics.jsonl").read_text() == a0_metrics
    b0 = [json.loads(l) for l in (out / "b" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 2} in b0
    assert len(res["runs"]) == 4 and all(r["status"] == "done" for r in res["runs"])
    assert {r["tokens"] for r in res["runs"]} == {4 * 4 * 16}  # equal budget for all
    for r in res["runs"]:
        assert r["bpb"] > 0 and r["curve"] and r["parameters"] > 0
    assert set(res["variants"]) == {"a", "b"}
    assert res["experiment"]["stats"] == partial["experiment"]["stats"] == {"correction": "holm", "level": 0.95}
    assert res["variants"]["b"]["diff"]["correction"] == "holm"
    assert res["variants"]["a"]["diff"]["verdict"] == "baseline" or res["variants"]["a"].get("verdict") == "baseline"
    for f in ("results.json", "report.md", "report.html"):
        assert (out / f).exists()
    # a third invocation does no training at all
    calls.clear()
    run_compare(exp, out, progress=False, log=lambda s: None, report=False)
    assert calls == []


def test_length_extrapolation_metrics(corpus, tmp_path):  # noqa: F811
    """eval.seq_lens adds bpb@N / loss@N per run; ``also`` tabulates them with the same statistics."""
    exp_path = write_exp(tmp_path, corpus, extra="also: [bpb@32, loss@64]\n", budget="steps: 2")
    text = exp_path.read_text().replace("max_tokens: 256}", "max_tokens: 256, seq_lens: [32, 64]}")
    exp_path.write_text(text)
    with pytest.raises(ConfigError, match="exceeds variant a's model.max_seq_len 48"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace("budget:", "overrides: {model.max_seq_len: 48}\nbudget:"))
        load_experiment(bad)
    exp = load_experiment(exp_path)
    assert exp.eval_seq_lens == [32, 64] and exp.also == ["bpb@32", "loss@64"]
    res = run_compare(exp_path, tmp_path / "out", progress=False, log=lambda s: None)
    for r in res["runs"]:
        assert r["bpb@32"] > 0 and r["loss@64"] > 0
        assert r["bpb@32"] != r["bpb"]  # other windows: other contexts, other numbers
    assert set(res["also"]) == {"bpb@32", "loss@64"}
    assert res["also"]["bpb@32"]["a"]["metric"] == "bpb@32"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Also measured: bpb@32" in md and "loss@64 mean ± std" in md


def test_stale_runs_are_refused_then_rerun_on_request(corpus, tmp_path):  # noqa: F811
    """A finished experiment, then its file edited: re-running into the same folder must not mix
    old runs into new statistics."""
    exp_path = write_exp(tmp_path, corpus, variants="  a: {}\n", budget="steps: 2")
    out = tmp_path / "out"
    lines: list[str] = []
    run_compare(exp_path, out, progress=False, log=lines.append, report=False)
    first = json.loads((out / "a" / "seed0" / "result.json").read_text())
    assert len(first["fingerprint"]) == 64 and "fingerprint_of" not in json.loads(
        (out / "results.json").read_text())["runs"][0]
    # unchanged: both runs reused
    lines.clear()
    run_compare(exp_path, out, progress=False, log=lines.append, report=False)
    assert sum("skipped" in line for line in lines) == 2
    # a changed budget and width: refused in one line naming the keys, before anything is trained
    exp_path.write_text(exp_path.read_text().replace("steps: 2", "steps: 3"))
    (tmp_path / "base.yaml").write_text((tmp_path / "base.yaml").read_text().replace("dim: 32", "dim: 16"))
    with pytest.raises(ConfigError) as e:
        run_compare(exp_path, out, progress=False, log=lambda s: None, report=False)
    msg = str(e.value)
    assert "\n" not in msg and "2 finished run(s)" in msg and "--rerun-stale" in msg
    assert "config.model.dim" in msg and "config.train.steps" in msg
    assert json.loads((out / "a" / "seed0" / "result.json").read_text()) == first  # untouched
    # --rerun-stale trains them again under the new settings
    res = run_compare(exp_path, out, progress=False, log=lambda s: None, report=False, rerun_stale=True)
    assert all(r["steps"] == 3 for r in res["runs"])
    assert json.loads((out / "a" / "seed1" / "result.json").read_text())["fingerprint"] != first["fingerprint"]
    # a different evaluation cap is a change too
    exp_path.write_text(exp_path.read_text().replace("max_tokens: 256", "max_tokens: 128"))
    with pytest.raises(ConfigError, match="eval.max_tokens"):
        run_compare(exp_path, out, progress=False, log=lambda s: None, report=False)
    # a result made before fingerprints is stale as well
    exp_path.write_text(exp_path.read_text().replace("max_tokens: 128", "max_tokens: 256"))
    legacy = json.loads((out / "a" / "seed0" / "result.json").read_text())
    for key in ("fingerprint", "fingerprint_of"):
        legacy.pop(key)
    (out / "a" / "seed0" / "result.json").write_text(json.dumps(legacy))
    with pytest.raises(ConfigError, match="records no fingerprint"):
        run_compare(exp_path, out, progress=False, log=lambda s: None, report=False)


def test_a_knob_added_since_at_its_default_keeps_the_run(corpus, tmp_path):  # noqa: F811
    """A run recorded before a knob existed (its fingerprint lacks the key) is the same run when
    the knob is at its default now; set away from the default, it is a change."""
    exp_path = write_exp(tmp_path, corpus, variants="  a: {}\n", budget="steps: 2")
    out = tmp_path / "out"
    run_compare(exp_path, out, progress=False, log=lambda s: None, report=False)
    for seed in (0, 1):  # pretend both runs were made before model.init existed
        f = out / "a" / f"seed{seed}" / "result.json"
        r = json.loads(f.read_text())
        del r["fingerprint_of"]["config"]["model"]["init"]
        r["fingerprint"] = "0" * 64
        f.write_text(json.dumps(r))
    lines: list[str] = []
    run_compare(exp_path, out, progress=False, log=lines.append, report=False)
    assert sum("skipped" in line for line in lines) == 2
    base = tmp_path / "base.yaml"
    base.write_text(base.read_text().replace("heads: 4}", "heads: 4, init: fixed}"))
    with pytest.raises(ConfigError, match="config.model.init"):
        run_compare(exp_path, out, progress=False, log=lambda s: None, report=False)


def test_cli_refuses_stale_runs_with_exit_2(corpus, tmp_path):  # noqa: F811
    import subprocess
    import sys

    exp_path = write_exp(tmp_path, corpus, variants="  a: {}\n", budget="steps: 1")
    out = tmp_path / "out"
    run_compare(exp_path, out, progress=False, log=lambda s: None, report=False)
    exp_path.write_text(exp_path.read_text().replace("seeds: [0, 1]", "seeds: [0, 1]\noverrides: {train.lr: 0.001}"))
    proc = subprocess.run([sys.executable, "-m", "archlab", "compare", str(exp_path), "--out", str(out),
                           "--no-progress", "--no-report"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("archlab: error:") and "config.train.lr" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
