"""``archlab bench retnet``: archlab's RetNet against yet-another-retnet at a matched
configuration, interleaved in one process.

    archlab bench retnet                                   # lengths 256, 1024, 2048
    archlab bench retnet --lengths 512 --rounds 7 --out runs/bench/retnet.json

The matched model (both sides, random initialisation): width 256, 4 layers, 4 heads, byte
vocabulary, LayerNorm pre-norm, a two-layer GELU feed-forward of width 1024, biases in every
linear layer, an untied output layer; retention with value width = model width, a gate and a
group norm per head. What differs by design: archlab's retention applies the paper's two
normalisations and decays over positions (the peer applies neither); the peer has one
activation knob for its feed-forward and its gate, set to GELU to match archlab's
feed-forward (the larger cost), so its gate is GELU where archlab's is the paper's swish; the
peer's decays are log-spaced from 1/32 to 1/512 (archlab's, the paper's 1 − 2^(−5−h),
coincide with them at 5 heads).

* **train**: one AdamW step (forward, backward, update) on a batch of ``--tokens`` tokens per
  step (batch = tokens / length) at each length. archlab's model trains in its ``auto`` form
  (parallel up to ``chunk_size``, chunkwise beyond); the peer in its parallel form
  (``forward_parallel``) and, as a second contender, chunkwise (its ``forward_chunkwise``
  called chunk by chunk with the state in between, ``--chunk`` tokens per chunk). The headline
  is archlab's speed over the *best* peer form at each length (> 1: archlab faster), the median
  of per-round ratios.
* **decode**: batch 1, a 16-token prompt, then ``--new-tokens`` greedy tokens, each side with
  its recurrent form (archlab: ``archlab.models.generate`` with the cache; the peer:
  ``forward_recurrent`` token by token); per-token time and the same ratio.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from archlab.bench.interleave import environment, interleaved, paired_ratio, write_json

DIM, DEPTH, HEADS, VOCAB, FF = 256, 4, 4, 256, 1024


def _peer(dim: int, depth: int, heads: int):
    """yet-another-retnet's RetNet of the matched configuration, or (None, why)."""
    try:
        from yet_another_retnet.retnet import RetNet
    except ImportError as e:  # pragma: no cover - depends on the environment
        return None, f"yet-another-retnet not installed ({e}); pip install 'archlab[peers]'"
    return RetNet(num_tokens=VOCAB, d_model=dim, nhead=heads, num_layers=depth, dropout=0.0,
                  activation="gelu", dim_feedforward=4 * dim, norm_first=True), None


def _ours(dim: int, depth: int, heads: int, max_len: int, chunk: int):
    from archlab.config import load_config
    from archlab.models import build_model

    cfg = load_config(None, [f"model.dim={dim}", f"model.depth={depth}", f"model.heads={heads}",
                             f"model.max_seq_len={max_len}", "model.bias=true", "model.tie_embeddings=false",
                             f'model.layers.default.mixer={{"kind": "retention", "chunk_size": {chunk}}}',
                             'model.layers.default.ffn={"kind": "gelu", "mult": 4}',
                             'model.layers.default.norm={"kind": "layer", "placement": "pre"}',
                             "data.tokenizer=bytes"], require_budget=False)
    return build_model(cfg.model)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_of: Callable[[], torch.Tensor]) -> Callable[[], float]:
    def run() -> float:
        model.train()
        t0 = time.perf_counter()
        loss_of().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0
    return run


def _peer_chunkwise(peer, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """The peer's logits from its chunkwise form, chunk by chunk with the states in between."""
    outs, states = [], []
    for a in range(0, ids.shape[1], chunk):
        y, states = peer.forward_chunkwise(ids[:, a:a + chunk], start_idx=a, prev_states=states)
        outs.append(y)
    return torch.cat(outs, dim=1)


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main(argv: list[str] | None = None, mode: str = "retnet") -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    summary, examples = __doc__.split("\n\n")[:2]
    shared = common_options(rounds=5, out="runs/bench/retnet.json")
    ap = ArgumentParser(prog=f"archlab bench {mode}", description=plain(summary), parents=[shared],
                        epilog="examples:\n" + examples.replace("    archlab", "  archlab"))
    ap.add_argument("--lengths", default="256,1024,2048", help="comma-separated training lengths")
    ap.add_argument("--tokens", type=int, default=4096, help="training tokens per step (batch = tokens / length)")
    ap.add_argument("--chunk", type=int, default=256, help="chunk size of both sides' chunkwise form")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per decode")
    a = ap.parse_args(argv)
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
    except ValueError:
        ap.error(f"--lengths: '{a.lengths}' is not a comma-separated list of integers")
    for k in ("tokens", "chunk", "new_tokens", "rounds"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')}: must be ≥ 1, got {getattr(a, k)}")
    if any(T < 1 or a.tokens % T for T in lengths):
        ap.error(f"--lengths: every length must be ≥ 1 and divide --tokens {a.tokens}, got {a.lengths}")
    peer_probe, why = _peer(DIM, DEPTH, HEADS)
    if peer_probe is None:
        ap.error(why)
    if a.threads:
        torch.set_num_threads(a.threads)
    out: dict[str, Any] = {"config": {"dim": DIM, "depth": DEPTH, "heads": HEADS, "vocab": VOCAB, "ffn": FF,
                                      "tokens_per_step": a.tokens, "chunk": a.chunk},
                           "train": {}, "rounds": a.rounds}
    for T in lengths:
        torch.manual_seed(a.seed)
        ours = _ours(DIM, DEPTH, HEADS, max(T, 256) + a.new_tokens + 16, a.chunk)
        peer, _ = _peer(DIM, DEPTH, HEADS)
        B = a.tokens // T
        ids = torch.randint(0, VOCAB, (B, T + 1))
        x, y = ids[:, :-1], ids[:, 1:]
        o_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
        o_peer = torch.optim.AdamW(peer.parameters(), lr=1e-4)
        runs = {"archlab": _step(ours, o_ours, lambda: ours(x, targets=y).loss),
                "peer_parallel": _step(peer, o_peer, lambda: _ce(peer.forward_parallel(x), y))}
        if a.chunk < T:
            runs["peer_chunkwise"] = _step(peer, o_peer, lambda: _ce(_peer_chunkwise(peer, x, a.chunk), y))
        for r in runs.values():  # warm-up
            r()
        res = interleaved(runs, rounds=a.rounds)
        peers = [n for n in runs if n != "archlab"]
        best = min(peers, key=lambda n: res["results"][n]["median"])
        out["train"][str(T)] = {
            "batch": B, "step_s": {n: r["median"] for n, r in res["results"].items()}, "best_peer": best,
            "speedup_vs_best_peer": paired_ratio(res, best, "archlab"),
            "params": {"archlab": sum(p.numel() for p in ours.parameters()),
                       "peer": sum(p.numel() for p in peer.parameters())}}
        r = out["train"][str(T)]
        print(f"train T={T} (batch {B}): best peer ({best}) / archlab = {r['speedup_vs_best_peer']:.2f}x  "
              + "  ".join(f"{n} {s * 1e3:.1f} ms" for n, s in r["step_s"].items()))
    # decoding, batch 1, recurrent on both sides
    from archlab.models import generate

    torch.manual_seed(a.seed)
    ours = _ours(DIM, DEPTH, HEADS, 16 + a.new_tokens + 16, a.chunk).eval()
    peer, _ = _peer(DIM, DEPTH, HEADS)
    peer.eval()
    prompt = torch.randint(0, VOCAB, (1, 16))

    def dec_ours() -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            generate(ours, prompt, max_new_tokens=a.new_tokens, temperature=0.0, use_cache=True)
            return (time.perf_counter() - t0) / a.new_tokens

    def dec_peer() -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            states: list = []
            tok = None
            for i in range(prompt.shape[1] + a.new_tokens - 1):
                inp = prompt[:, i] if i < prompt.shape[1] else tok
                logits, states = peer.forward_recurrent(inp, seq_idx=i, prev_states=states)
                tok = logits.argmax(-1)
            return (time.perf_counter() - t0) / a.new_tokens

    dec_ours(), dec_peer()
    res = interleaved({"archlab": dec_ours, "peer": dec_peer}, rounds=a.rounds)
    out["decode"] = {"new_tokens": a.new_tokens, "prompt": 16,
                     "per_token_s": {n: r["median"] for n, r in res["results"].items()},
                     "speedup_vs_peer": paired_ratio(res, "peer", "archlab")}
    d = out["decode"]
    print(f"recurrent decoding (batch 1, 16-token prompt + {a.new_tokens} tokens): peer / archlab = "
          f"{d['speedup_vs_peer']:.2f}x  ({d['per_token_s']['peer'] * 1e3:.2f} vs "
          f"{d['per_token_s']['archlab'] * 1e3:.2f} ms per token, prompt included)")
    out["environment"] = environment()
    if a.out:
        write_json(a.out, out)
    return 0
