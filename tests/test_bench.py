"""Harness logic of archlab.bench.harness / peers on tiny models.

These check bookkeeping (keys, counts, ordering, formulas, filtering), never speed: timing
assertions on a shared machine would be flaky by construction.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

from archlab.bench import harness, interleave, peers
from archlab.models import counting


class TinyLM(nn.Module):
    """Embedding -> Linear -> head: enough to exercise a full training step."""

    def __init__(self, vocab: int = 16, dim: int = 8, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


# ---------------------------------------------------------------------------------------------
# FLOP accounting


def test_train_flops_hand_example() -> None:
    # N=10 block params, L=1, d=2, T=3, V=5:
    # dense 6*(10 + 5*2) = 120; attention 12*1*3*2 = 72.
    assert counting.train_flops_per_token(10, depth=1, dim=2, seq_len=3, vocab=5) == 192.0
    assert counting.train_flops_per_token(10, 1, 2, 3, 5, causal_discount=True) == 120.0 + 36.0
    # attention width can differ from the model width (e.g. heads*head_dim != dim)
    assert counting.train_flops_per_token(10, 1, 2, 3, 5, attn_dim=4) == 120.0 + 144.0


def test_train_flops_reference_shape_magnitude() -> None:
    # 4 layers of 12*d^2 at d=256, plus head, plus attention: ~22.4 MFLOP/token.
    f = counting.train_flops_per_token(4 * 12 * 256 * 256, 4, 256, 256, 256)
    assert f == 6 * (3_145_728 + 65_536) + 12 * 4 * 256 * 256


def test_nonembedding_params_untied_and_tied() -> None:
    m = TinyLM(vocab=5, dim=2)
    # mix: 2*2 + 2 = 6; embedding (10) dropped; head excluded explicitly.
    assert counting.nonembedding_params(m, exclude=[m.head]) == 6
    assert counting.nonembedding_params(m) == 6 + 10  # head counted when not excluded
    t = TinyLM(vocab=5, dim=2, tied=True)
    assert counting.nonembedding_params(t) == 6  # tied head goes with the embedding


def test_mfu() -> None:
    assert harness.mfu(1000.0, 1e6, 10.0) == pytest.approx(0.1)
    assert math.isnan(harness.mfu(1000.0, 1e6, 0.0))


# ---------------------------------------------------------------------------------------------
# Interleaving


def _recorder(log: list[str], values: dict[str, list[float]]) -> dict[str, object]:
    def make(name: str):
        it = iter(values[name])

        def run() -> dict[str, float]:
            log.append(name)
            return {"tokens_per_s": next(it)}

        return run

    return {n: make(n) for n in values}


def test_interleaved_alternates_and_rotates() -> None:
    log: list[str] = []
    runs = _recorder(log, {"a": [1, 2, 3], "b": [10, 20, 30]})
    s = interleave.interleaved(runs, rounds=3)
    assert log == ["a", "b", "b", "a", "a", "b"]  # start rotates each round
    assert s["order"] == log
    assert s["results"]["a"]["values"] == [1, 2, 3]
    assert s["results"]["a"]["median"] == 2
    assert s["results"]["b"]["median"] == 20
    assert interleave.ratio(s, "b", "a") == 10
    assert interleave.paired_ratio(s, "b", "a") == 10


def test_interleaved_no_rotate_and_plain_numbers() -> None:
    log: list[str] = []
    counter = iter(range(100))

    def run(name: str):
        def f() -> float:
            log.append(name)
            return float(next(counter))

        return f

    s = interleave.interleaved({"x": run("x"), "y": run("y"), "z": run("z")}, rounds=2, rotate=False)
    assert log == ["x", "y", "z", "x", "y", "z"]
    assert s["results"]["y"]["values"] == [1.0, 4.0]


def test_interleaved_key_mapping() -> None:
    s = interleave.interleaved({"m": lambda: {"gflops": 5.0}, "t": lambda: {"tokens_per_s": 7.0}},
                          rounds=2, key={"m": "gflops", "t": "tokens_per_s"})
    assert s["results"]["m"]["median"] == 5.0 and s["results"]["t"]["median"] == 7.0


def test_interleaved_drops_contended_rounds() -> None:
    foreign = {"a": iter([0.0, 0.9, 0.0]), "b": iter([0.0, 0.0, 0.5])}
    vals = {"a": iter([10.0, 1.0, 12.0]), "b": iter([20.0, 2.0, 3.0])}
    runs = {n: (lambda n=n: {"tokens_per_s": next(vals[n]), "foreign_cpu": next(foreign[n])}) for n in "ab"}
    s = interleave.interleaved(runs, rounds=3, max_foreign_cpu=0.2)
    assert s["kept_rounds"] == [0]
    assert s["results"]["a"]["median"] == 10.0 and s["results"]["b"]["median"] == 20.0
    assert len(s["results"]["a"]["values"]) == 3  # dropped rounds stay in the raw data


def test_interleaved_all_rounds_dropped_falls_back() -> None:
    runs = {"a": lambda: {"tokens_per_s": 1.0, "foreign_cpu": 1.0}}
    s = interleave.interleaved(runs, rounds=2, max_foreign_cpu=0.1)
    assert s["kept_rounds"] == [0, 1]


def test_interleaved_probe_filter() -> None:
    probes = iter([100.0, 100.0, 20.0, 100.0])  # round 1 is bracketed by a slow probe
    vals = iter([1.0, 50.0, 3.0])
    s = interleave.interleaved({"a": lambda: next(vals)}, rounds=3, probe=lambda: next(probes), probe_keep=0.8)
    assert s["probe"] == [100.0, 20.0, 20.0]
    assert s["kept_rounds"] == [0]
    assert s["results"]["a"]["median"] == 1.0


def test_summarize_uses_best_peer() -> None:
    vals = {"peer-x": iter([100.0, 100.0]), "peer-y": iter([200.0, 200.0]), "ours": iter([300.0, 300.0])}
    s = interleave.interleaved({n: (lambda n=n: next(vals[n])) for n in vals}, rounds=2)
    out = interleave.summarize(s)
    assert out["baseline"] == "peer-y"
    assert out["ratios"]["ours"] == pytest.approx(1.5)
    assert out["paired_ratios"]["peer-x"] == pytest.approx(0.5)


def test_interleaved_needs_contenders() -> None:
    with pytest.raises(ValueError):
        interleave.interleaved({}, rounds=1)


# ---------------------------------------------------------------------------------------------
# Measurements on a tiny model (sanity of the returned numbers, not their size)


def test_bench_train_step_keys_and_update() -> None:
    torch.manual_seed(0)
    m = TinyLM()
    before = m.mix.weight.detach().clone()
    r = harness.bench_train_step(m, batch_size=2, seq_len=8, vocab_size=16, steps=2, warmup=1)
    assert r["tokens_per_s"] > 0 and r["tokens_per_step"] == 16
    assert r["step_time_s"]["n"] == 2 and r["step_time_s"]["min"] <= r["step_time_s"]["max"]
    assert math.isfinite(r["final_loss"])
    assert r["peak_rss_mb"] is None or r["peak_rss_mb"] > 0
    assert r["foreign_cpu"] is None or 0.0 <= r["foreign_cpu"] <= 1.0
    assert not torch.equal(before, m.mix.weight)  # the optimizer really stepped
    json.dumps(r)


def test_train_bench_cycles_batches_and_accepts_output_objects() -> None:
    class Out:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class Wrapped(TinyLM):
        def forward(self, ids: torch.Tensor) -> Out:  # type: ignore[override]
            return Out(super().forward(ids))

    tb = harness.TrainBench(Wrapped(), batch_size=2, seq_len=4, vocab_size=16, n_batches=2).warmup(1)
    r = tb.run(3)
    assert tb.steps_done == 4 and r["steps"] == 3


def test_bench_generate_counts_tokens() -> None:
    calls: list[int] = []

    def gen(prompt: torch.Tensor, n: int) -> torch.Tensor:
        assert prompt.shape == (1, 4) and not torch.is_grad_enabled()
        calls.append(n)
        return torch.zeros(1, n, dtype=torch.long)

    r = harness.bench_generate(gen, prompt_len=4, new_tokens=16, repeats=2, warmup=1)
    assert calls == [8, 16, 16]  # short warm-up call, then the timed ones
    assert r["returned_len"] == 16 and r["tokens_per_s"] > 0
    assert r["ms_per_token"] == pytest.approx(1e3 * r["call_time_s"]["median"] / 16)


def test_measure_matmul_peak_positive() -> None:
    peak = harness.measure_matmul_peak(n=64, seconds=0.005, repeats=2)
    assert peak > 0  # a throughput figure came back (its size is not asserted)


def test_compare_train_and_generate_tiny() -> None:
    shape = harness.ReferenceShape(vocab=16, dim=8, depth=1, heads=1, seq_len=8, batch_size=2,
                                 prompt_len=2, new_tokens=4)
    torch.manual_seed(0)
    a, b = TinyLM(), TinyLM()
    gen = lambda p, n: torch.zeros(1, n, dtype=torch.long)  # noqa: E731
    cs = [interleave.Contender("peer-a", a, generate_fn=gen, n_params_nonembedding=72),
          interleave.Contender("ours", b, generate_fn=gen, n_params_nonembedding=72)]
    res = interleave.compare_train(cs, shape, rounds=2, steps_per_round=1, warmup=1, peak_probe=lambda: 1.0)
    assert set(res["contenders"]) == {"peer-a", "ours"}
    assert res["peak_gflops"] == 1.0
    assert res["contenders"]["ours"]["mfu"] > 0
    assert res["comparison"]["baseline"] == "peer-a" and "ours" in res["comparison"]["ratios"]
    assert res["interleaving"]["order"] == ["peer-a", "ours", "ours", "peer-a"]
    g = interleave.compare_generate(cs, shape, rounds=1)
    assert g["contenders"]["ours"]["returned_len"] == 4
    json.dumps(interleave._jsonable(res))


def test_step_breakdown_sorts_the_time() -> None:
    """``bench train --breakdown``: the model's products land under matmul, the rest under
    other ops, and the parts add up to at most the step."""
    from archlab.bench.throughput import step_breakdown

    shape = harness.ReferenceShape(vocab=16, dim=8, depth=1, heads=1, seq_len=8, batch_size=2)
    torch.manual_seed(0)
    b = step_breakdown(interleave.Contender("ours", TinyLM()), shape)
    assert set(b) == {"step_ms", "matmul_ms", "attention_ms", "other_ms", "unattributed_ms"}
    assert b["matmul_ms"] > 0 and b["other_ms"] > 0 and b["attention_ms"] == 0
    assert b["matmul_ms"] + b["attention_ms"] + b["other_ms"] <= b["step_ms"] * 1.05


# ---------------------------------------------------------------------------------------------
# Environment and output


def test_environment_and_write_json(tmp_path) -> None:
    env = interleave.environment()
    for k in ("torch", "torch_threads", "cpu_model", "cpu_count"):
        assert k in env
    p = interleave.write_json(tmp_path / "sub" / "r.json", {"x": float("nan"), "t": torch.tensor([1, 2]),
                                                       "shape": harness.REFERENCE_SHAPE, "env": env})
    data = json.loads(p.read_text())
    assert data["x"] is None and data["t"] == [1, 2] and data["shape"]["seq_len"] == 256


# ---------------------------------------------------------------------------------------------
# Peers


def test_peers_missing_gives_one_line_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "x_transformers", None)  # makes the import fail
    with pytest.raises(peers.PeerNotInstalled, match=r"^peers not installed: pip install 'archlab\[peers\]'$"):
        peers.xtransformers_lm(vocab=16, dim=8, depth=1, heads=1, seq_len=8)


def test_xtransformers_adapter_shape() -> None:
    pytest.importorskip("x_transformers")
    torch.manual_seed(0)
    m = peers.xtransformers_lm(vocab=16, dim=16, depth=1, heads=2, seq_len=8, max_seq_len=12, attn_flash=True)
    ids = torch.randint(0, 16, (2, 9))
    assert m(ids[:, :-1]).shape == (2, 8, 16)
    assert peers.xtransformers_loss(m, ids).ndim == 0
    # tied head: no parameters of its own; attention q,k,v,o are dim x dim
    assert peers.xtransformers_head(m) == []
    gen = peers.xtransformers_generate_fn(m)
    with torch.inference_mode():
        out = gen(torch.randint(0, 16, (1, 3)), 5)
    assert out.shape == (1, 5)


@pytest.mark.parametrize("mixer", ["attention", "retention:form=parallel", "retention"])
def test_scaling_point_times_training_and_decoding(mixer) -> None:
    """One point of ``bench scaling`` in this process (the bench spawns one per point): a
    forward+backward time, a peak, and a decoding time per token after T cached tokens."""
    from archlab.bench.scaling import _measure, decode_growth

    class Box(list):
        put = list.append

    box = Box()
    for T in (8, 16):
        _measure(mixer, T, 16, 2, 1, "cpu", box)
    assert all("error" not in p for p in box), box
    assert all(p["seconds"] > 0 and p["decode_ms_per_token"] > 0 for p in box)
    g = decode_growth({"points": box})
    assert set(g) == {mixer} and g[mixer] > 0


@pytest.mark.parametrize("argv, needle", [
    (["--mixers", "retention:form=blocked"], "--mixers"),
    (["--mixers", "nosuch"], "--mixers"),
    (["--mixers", "retention:form"], "not key=value"),
    (["--lengths", "128,x"], "--lengths"),
    (["--lengths", "0"], "--lengths"),
    (["--repeats", "0"], "--repeats"),
])
def test_scaling_refuses_bad_options_before_measuring(argv, needle, capsys) -> None:
    from archlab.bench.scaling import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--lengths", "100"], "divide --tokens"),
    (["--lengths", "a"], "--lengths"),
    (["--chunk", "0"], "--chunk"),
    (["--new-tokens", "0"], "--new-tokens"),
])
def test_retnet_bench_refuses_bad_options(argv, needle, capsys) -> None:
    from archlab.bench.retnet import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_retnet_bench_peer_chunkwise_equals_its_parallel_form() -> None:
    """The peer driven chunk by chunk (how the bench times its chunkwise form) computes what
    its parallel form does, so the two peer contenders do the same job."""
    pytest.importorskip("yet_another_retnet")
    from archlab.bench.retnet import _peer, _peer_chunkwise

    torch.manual_seed(0)
    peer, _ = _peer(32, 2, 4)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(_peer_chunkwise(peer.eval(), ids, 8), peer.forward_parallel(ids), atol=1e-4, rtol=1e-4)
