"""``archlab info``: what a config builds — parameters, FLOPs per token, the layer table."""

from __future__ import annotations

from archlab.config import Config
from archlab.models import build_model
from archlab.lab.bench import nonembedding_params, train_flops_per_token
from archlab.models.lm import count_parameters


def _part(p) -> str:
    if p is None:
        return "(model)"
    args = {k: v for k, v in vars(p).items() if k != "kind"}
    inner = ", ".join(f"{k}={v}" for k, v in args.items())
    return f"{p.kind}({inner})" if inner else p.kind


def describe(cfg: Config) -> str:
    m, t = cfg.model, cfg.train
    model = build_model(m)
    n = count_parameters(model)
    n_ne = count_parameters(model, exclude_embeddings=True)
    if m.family != "lm":  # the FLOP formula and layer table below describe the plain LM only
        opts = ", ".join(f"{k}={v}" for k, v in vars(m.family_config()).items() if k != "kind")
        return "\n".join([
            f"family {m.family}: {opts}",
            f"parameters: {n:,} ({n_ne:,} without the token embedding)",
            "FLOPs per token: not estimated for this family (the formula covers family 'lm'); "
            "measure with archlab bench",
            f"modules:\n{model}",
        ])
    head = [] if model.head.weight is model.embed.weight else [model.head]
    train_fl = train_flops_per_token(nonembedding_params(model, exclude=head), m.depth, m.dim, t.seq_len,
                                     m.vocab_size, attn_dim=m.heads * m.resolved_head_dim(),
                                     causal_discount=True)  # the fused causal kernel skips masked blocks
    fl = {"forward": train_fl / 3, "train": train_fl}
    lines = [
        f"family {m.family}: dim {m.dim}, depth {m.depth}, heads {m.heads} (kv {m.resolved_kv_heads()}, "
        f"head_dim {m.resolved_head_dim()}), vocab {m.vocab_size}, position {_part(m.position)}",
        f"parameters: {n:,} ({n_ne:,} without the token embedding)",
        f"FLOPs per token at seq_len {t.seq_len}: forward {fl['forward'] / 1e6:.2f} M, "
        f"train (fwd+bwd) {fl['train'] / 1e6:.2f} M",
        (f"budget: {t.total_steps()} steps × {t.batch} × {t.seq_len} = "
         f"{t.total_steps() * t.batch * t.seq_len:,} tokens" if t.total_steps() is not None
         else f"budget: {t.seconds:g} s of training"),
        "",
        f"{'layer':>5}  {'mixer':<22} {'ffn':<22} {'norm':<26} position",
    ]
    for i, lc in enumerate(m.layer_configs()):
        lines.append(f"{i:>5}  {_part(lc.mixer):<22} {_part(lc.ffn):<22} {_part(lc.norm):<26} {_part(lc.position)}")
    return "\n".join(lines)
