"""``archlab info``: what a config builds — parameters, FLOPs per token, the layer table —
and the facts ``archlab train --dry-run`` prints before it would start."""

from __future__ import annotations

import yaml

from archlab.config import Config, TrainConfig
from archlab.models import build_model
from archlab.models.counting import count_parameters, nonembedding_params, train_flops_per_token
from archlab.registry import PartConfig


def _part(p) -> str:
    if p is None:
        return "(model)"
    args = {k: v for k, v in vars(p).items() if k != "kind"}
    # a part inside a part (a norm's residual policy): its own kind(knobs)
    inner = ", ".join(f"{k}={_part(v) if isinstance(v, PartConfig) else v}" for k, v in args.items())
    return f"{p.kind}({inner})" if inner else p.kind


def budget_line(t: TrainConfig) -> str:
    """The training budget in words; a config read without one (``archlab info``) says so."""
    steps = t.total_steps()
    if steps is not None:
        return f"budget: {steps} step{'s' if steps != 1 else ''} × {t.batch} × {t.seq_len} = {steps * t.batch * t.seq_len:,} tokens"
    if t.seconds is not None:
        return f"budget: {t.seconds:g} s of training"
    return "budget: none set (train needs one of train.steps, train.tokens, train.seconds)"


def facts(cfg: Config, model=None) -> list[str]:
    """Parameters, tokens per optimiser step and the budget: what a run of ``cfg`` costs, so a
    mistake (a width off by 10×, a budget in the wrong unit) shows before any training."""
    model = build_model(cfg.model) if model is None else model
    t = cfg.train
    n, n_ne = count_parameters(model), count_parameters(model, exclude_embeddings=True)
    return [
        f"parameters: {n:,} ({n_ne:,} without the token embedding)",
        f"tokens per step: {t.batch} × {t.seq_len} = {t.batch * t.seq_len:,}"
        + (f" (grad_accum {t.grad_accum})" if t.grad_accum > 1 else ""),
        budget_line(t),
        *([f"warm start: a statistics pass over the first {t.warm_start.tokens:,} training tokens, then "
           + ", ".join(p["kind"] for p in t.warm_start.parts)] if t.warm_start is not None and t.warm_start.parts
          else []),
    ]


def resolved_yaml(cfg: Config) -> str:
    """The config with every default filled in, as YAML: exactly what a run of it would use
    (and the same form as the ``config.yaml`` a run saves)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def describe(cfg: Config, *, full: bool = False) -> str:
    """The ``archlab info`` page; ``full`` appends the resolved config (:func:`resolved_yaml`)."""
    text = _describe(cfg)
    if full:
        text += "\n\n# resolved config (every default filled in)\n" + resolved_yaml(cfg).rstrip("\n")
    return text


def _describe(cfg: Config) -> str:
    m, t = cfg.model, cfg.train
    model = build_model(m)
    if m.family != "lm":  # the FLOP formula and layer table below describe the plain LM only
        opts = ", ".join(f"{k}={v}" for k, v in vars(m.family_config()).items() if k != "kind")
        return "\n".join([
            f"family {m.family}: {opts}",
            *facts(cfg, model),
            "FLOPs per token: not estimated for this family (the formula covers family 'lm'); "
            "measure with archlab bench",
            f"modules:\n{model}",
        ])
    head = [] if model.head.weight is model.embed.weight else [model.head]
    train_fl = train_flops_per_token(nonembedding_params(model, exclude=head), m.depth, m.dim, t.seq_len,
                                     m.vocab_size, attn_dim=m.heads * m.resolved_head_dim(),
                                     causal_discount=True)  # the fused causal kernel skips masked blocks
    lines = [
        f"family {m.family}: dim {m.dim}, depth {m.depth}, heads {m.heads} (kv {m.resolved_kv_heads()}, "
        f"head_dim {m.resolved_head_dim()}), vocab {m.vocab_size}, position {_part(m.position)}",
        *facts(cfg, model),
        f"FLOPs per token at seq_len {t.seq_len}: forward {train_fl / 3 / 1e6:.2f} M, "
        f"train (fwd+bwd) {train_fl / 1e6:.2f} M",
        "",
        f"{'layer':>5}  {'mixer':<22} {'ffn':<22} {'norm':<26} position",
    ]
    for i, lc in enumerate(m.layer_configs()):
        lines.append(f"{i:>5}  {_part(lc.mixer):<22} {_part(lc.ffn):<22} {_part(lc.norm):<26} {_part(lc.position)}")
    return "\n".join(lines)
