"""One nested dataclass tree for a run: ``model``, ``data`` and ``train``.

Loading goes YAML -> plain dict -> ``--set`` overrides merged in -> typed, validated
:class:`Config`. Every mistake is refused here, before anything is built, with a one-line
:class:`~archlab.registry.ConfigError` naming the key and what is allowed.

Merging rule for parts: a mapping with a ``kind`` key is a *part*. When an override changes a
part's kind, the old kind's parameters are dropped (they belonged to the old kind) and the new
kind starts from its own defaults plus whatever the override itself gives.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from archlab import catalog  # noqa: F401  (registers the built-in parts)
from archlab.catalog.methods import ForwardGradientConfig
from archlab.catalog.warm import WarmStartConfig, parse_warm_start
from archlab.data.speech.text import DEFAULT_ALPHABET
from archlab.registry import FAMILY, INIT, INT_LIMIT, METHOD, TASK, ConfigError, PartConfig, from_dict, part, to_dict

__all__ = [
    "Config", "ModelConfig", "LayerConfig", "LayersConfig", "DataConfig", "SpeechDataConfig", "TrainConfig",
    "ConfigError", "load_config", "parse_config", "apply_overrides", "override_items", "deep_merge",
]


@dataclass
class LayerConfig:
    """One block: norm placement policy + token mixer + feed-forward (+ optional own position)."""

    mixer: PartConfig = part("mixer", lambda: {"kind": "attention"})
    ffn: PartConfig = part("ffn", lambda: {"kind": "swiglu"})
    norm: PartConfig = part("norm", lambda: {"kind": "rms"})
    # None: the model's position scheme (shared by all layers that do not override it).
    position: PartConfig | None = part("position", optional=True)


@dataclass
class LayersConfig:
    default: LayerConfig = field(default_factory=LayerConfig)
    # "0,2" / "1-3" / "-1" -> partial LayerConfig merged over ``default`` for those layers.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    family: str = "lm"
    vocab_size: int | None = None  # None: taken from the tokenizer
    dim: int = 256
    depth: int = 4
    heads: int = 4
    kv_heads: int | None = None  # grouped-query attention when < heads
    head_dim: int | None = None  # None: dim // heads
    max_seq_len: int = 4096  # table size for schemes with a learned table
    position: PartConfig = part("position", lambda: {"kind": "rope"})
    layers: LayersConfig = field(default_factory=LayersConfig)
    tie_embeddings: bool = True
    bias: bool = False  # biases in linear layers
    dropout: float = 0.0
    # The initialiser (a registry, catalog/init.py): 'fan_in' N(0, 1/(3·fan_in)) (PyTorch's nn.Linear
    # variance), 'fixed' N(0, init_std) (GPT-2); residual outputs ÷√(2·depth) in both (nn/init.py).
    # init_std is also the std of positional tables and kernels under either rule.
    init: str = "fan_in"
    init_std: float = 0.02
    # Knobs of the model family beyond the ones above, parsed by the dataclass registered with
    # the family (e.g. family 'hierarchical': hierarchies, dims, window_sizes; see docs/hierarchical.md).
    family_options: dict[str, Any] = field(default_factory=dict)

    def family_config(self) -> PartConfig:
        """``family_options`` as the family's registered dataclass (unknown keys refused)."""
        if "kind" in self.family_options:
            raise ConfigError("model.family_options.kind: not an option; the family is set by model.family")
        return FAMILY.parse({**self.family_options, "kind": self.family}, "model.family_options")

    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.heads

    def resolved_kv_heads(self) -> int:
        return self.kv_heads if self.kv_heads is not None else self.heads

    def layer_configs(self) -> list[LayerConfig]:
        """The per-layer configs after applying ``layers.overrides`` to ``layers.default``."""
        base = to_dict(self.layers.default)
        raw = [copy.deepcopy(base) for _ in range(self.depth)]
        for key, over in self.layers.overrides.items():
            where = f"model.layers.overrides.{key}"
            if not isinstance(over, dict):
                # merged over a layer, null or a scalar would silently replace the whole layer
                raise ConfigError(f"{where}: expected a mapping of layer settings (mixer, ffn, norm, position), "
                                  f"got {'null' if over is None else repr(over)}")
            for i in _layer_indices(str(key), self.depth, where):
                raw[i] = deep_merge(raw[i], over)
        return [
            from_dict(LayerConfig, r, f"model.layers[{i}]") for i, r in enumerate(raw)
        ]


@dataclass
class SpeechDataConfig:
    """``data.speech`` of corpus 'speech': the utterances a speech run trains and is scored on.

    ``path`` null: a corpus generated with espeak-ng (``n_train`` / ``n_valid`` / ``n_test``
    utterances from disjoint voices and sentences under ``seed``; built once in the cache
    folder and reused). ``path`` a folder: the user's corpus, one manifest per split —
    ``train``, ``validation`` and ``test`` each as a ``.jsonl``, a ``.csv`` or a folder of audio
    with ``.txt`` transcripts (archlab.data.speech.manifest). Transcripts are scored in
    normalised form (lowercase words); ``alphabet`` is the tokenizer's characters."""

    path: str | None = None
    n_train: int = 2000
    n_valid: int = 100
    n_test: int = 100
    seed: int = 0
    alphabet: str = DEFAULT_ALPHABET
    # the greedy transcriptions of a periodic evaluation stop after this many characters (0:
    # the longest reference + 10)
    max_new_tokens: int = 0


@dataclass
class DataConfig:
    corpus: Literal["stdlib", "path", "enwik8", "task", "speech"] = "stdlib"
    path: str | None = None
    tokenizer: Literal["bytes", "bpe"] = "bytes"  # text corpora; a task brings its own vocabulary
    bpe_vocab: int = 1024
    cache_dir: str | None = None  # None: $ARCHLAB_CACHE or ~/.cache/archlab
    # corpus 'task': a synthetic task {kind: counting | selective_copy | flipflop | assoc_recall, ...knobs}
    # (archlab.catalog.tasks; docs/tasks.md)
    task: PartConfig | None = part("task", optional=True)
    # corpus 'speech': the utterances (generated or the user's) and the transcript alphabet
    speech: SpeechDataConfig | None = None


@dataclass
class TrainConfig:
    steps: int | None = None  # exactly one of steps / tokens / seconds is the budget
    tokens: int | None = None
    seconds: float | None = None  # wall-clock budget (training time, evaluation excluded)
    batch: int = 16  # sequences per optimiser step (global, across ranks and accumulation)
    seq_len: int = 256
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    method: str = "backprop"  # how a step obtains its gradient (a registry: catalog/methods.py)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA with bf16
    compile: bool = False
    eval_every: int = 100
    eval_tokens: int = 65536  # validation tokens per periodic evaluation (0: whole split)
    log_every: int = 10
    ckpt_every: int = 200
    max_bad_steps: int = 5  # consecutive non-finite losses before stopping
    tensorboard: bool = True  # used when tensorboard is installed
    # learning-dynamics controllers ({kind: rope_base | window | dropout, ...knobs}); see docs/dynamics.md
    dynamics: list[Any] = field(default_factory=list)
    # steps at which the periodic evaluation also runs (0: before the first step, on a fresh run)
    eval_at: list[int] = field(default_factory=list)
    # initialisation from data statistics after model.init ({tokens, parts: [{kind: bit_cipher | cooccurrence |
    # closed_form, ...}]}); see docs/warm_start.md
    warm_start: WarmStartConfig | None = None
    # the knobs of train.method forward_gradient ({perturbations, distribution, density, estimator,
    # seed, replay}); see docs/forward_gradient.md
    forward_gradient: ForwardGradientConfig | None = None

    def total_steps(self) -> int | None:
        """Steps of a step/token budget; None for a wall-clock budget."""
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / (self.batch * self.seq_len)))
        return None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return to_dict(self)


# ----------------------------------------------------------------------------- merging


def _normalise_part(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


def deep_merge(base: Any, over: Any) -> Any:
    """Merge ``over`` into a copy of ``base``; a part whose kind changes starts afresh."""
    if not isinstance(over, dict):
        if isinstance(base, dict) and "kind" in base and isinstance(over, str):
            return deep_merge(base, {"kind": over})
        return copy.deepcopy(over)
    if isinstance(base, str):
        # a part written as its bare kind (``position: alibi``) refined by keys (``position.slopes``)
        return deep_merge({"kind": base}, over)
    if not isinstance(base, dict):
        return copy.deepcopy(over)
    if "kind" in over and "kind" in base and over["kind"] != base["kind"]:
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if k in out else copy.deepcopy(v)
    return out


def _dotted(key: str, value: Any) -> dict:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {key}: empty path component; expected e.g. model.position.kind=alibi")
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


def override_items(overrides: list[str] | dict[str, Any] | None) -> list[tuple[str, Any]]:
    """``["a.b=c", ...]`` (values parsed as YAML) or ``{"a.b": c}`` -> ``[(key, value), ...]``."""
    if not overrides:
        return []
    if isinstance(overrides, dict):
        items = list(overrides.items())
    elif isinstance(overrides, (list, tuple)):
        items = []
        for o in overrides:
            if not isinstance(o, str) or "=" not in o:
                raise ConfigError(f"--set {o}: expected KEY=VALUE, e.g. model.position.kind=alibi")
            k, v = o.split("=", 1)
            k = k.strip()
            try:
                items.append((k, _load_text(v) if v.strip() else None))
            except (ConfigError, yaml.YAMLError) as e:
                why = str(e) if isinstance(e, ConfigError) else f"not valid YAML{_yaml_problem(e)}"
                raise ConfigError(f"--set {k}: value {v!r}: {why}") from None
    else:
        raise ConfigError(f"overrides: expected a mapping of dotted keys or a list of KEY=VALUE, got {overrides!r}")
    for k, _ in items:
        if not isinstance(k, str):
            raise ConfigError(f"overrides: key {k!r} is not a dotted name such as model.dim")
    return items


def _apply_items(raw: dict, items: list[tuple[str, Any]]) -> dict:
    for k, v in items:
        raw = deep_merge(raw, _dotted(k, v))
    return raw


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any] | None) -> dict:
    """Apply ``["a.b=c", ...]`` (values parsed as YAML) or ``{"a.b": c}`` to a raw config dict."""
    return _apply_items(raw, override_items(overrides))


def _layer_indices(key: str, depth: int, where: str) -> list[int]:
    """``"0,2"`` / ``"1-3"`` / ``"-1"`` -> layer indices (negative counts from the end)."""
    out: list[int] = []
    for tok in key.replace(" ", "").split(","):
        single, span = re.fullmatch(r"-?\d+", tok), re.fullmatch(r"(\d+)-(\d+)", tok)
        if single:
            idx = [int(tok)]
        elif span:
            if int(span[1]) > int(span[2]):
                raise ConfigError(f"{where}: range '{tok}' selects no layer; write ranges low-high, e.g. 1-3")
            idx = list(range(int(span[1]), int(span[2]) + 1))
        else:
            raise ConfigError(
                f"{where}: bad layer selector '{tok}'; allowed: indices like 0,2, ranges like 1-3, or -1"
            )
        for i in idx:
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise ConfigError(f"{where}: layer {i} out of range for depth {depth}")
            out.append(j)
    return out


# ----------------------------------------------------------------------------- validation


BUDGET_KEYS = ("steps", "tokens", "seconds")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# train knob -> (allowed interval, why); the interval is written as in the error message
_TRAIN_RANGES = {
    **dict.fromkeys(("batch", "seq_len", "grad_accum", "eval_every", "log_every", "ckpt_every"), ("[1, inf)", "")),
    "lr": ("(0, inf)", ""), "warmup": ("[0, inf)", ""), "weight_decay": ("[0, inf)", ""),
    "min_lr_ratio": ("[0, 1]", " (the share of lr the cosine decays to)"),
    "beta1": ("[0, 1)", ""), "beta2": ("[0, 1)", ""), "seed": ("[0, inf)", ""),
    "grad_clip": ("[0, inf)", " (0 disables clipping)"), "eval_tokens": ("[0, inf)", " (0: the whole split)"),
    "max_bad_steps": ("[1, inf)", " (1: stop at the first non-finite loss)"),
}


def _check_range(value: float, where: str, interval: str, why: str) -> None:
    left, lo, hi, right = re.fullmatch(r"([\[(])(\S+), (\S+)([\])])", interval).groups()
    lo_f, hi_f = float(lo), float(hi)
    if value < lo_f or value > hi_f or (value == lo_f and left == "(") or (value == hi_f and right == ")"):
        raise ConfigError(f"{where}: must be in {interval}{why}, got {value}")


def _validate_model(m: ModelConfig) -> None:
    if m.family not in FAMILY:
        raise ConfigError(f"model.family: unknown family '{m.family}'; allowed: {', '.join(FAMILY.kinds())}")
    if m.init not in INIT:
        raise ConfigError(f"model.init: {m.init!r} is not allowed; allowed: {', '.join(INIT.kinds())}")
    for name in ("dim", "depth", "heads", "max_seq_len"):
        if getattr(m, name) <= 0:
            raise ConfigError(f"model.{name}: must be positive, got {getattr(m, name)}")
    for name in ("kv_heads", "head_dim", "vocab_size"):
        v = getattr(m, name)
        if v is not None and v <= 0:
            raise ConfigError(f"model.{name}: must be positive (or null for the default), got {v}")
    if m.head_dim is None and m.dim % m.heads:
        raise ConfigError(f"model.heads: {m.heads} does not divide model.dim {m.dim}; set model.head_dim or change heads")
    if m.heads % m.resolved_kv_heads():
        raise ConfigError(f"model.kv_heads: {m.kv_heads} must divide model.heads {m.heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout}")
    if m.init_std <= 0:
        raise ConfigError(f"model.init_std: must be positive (the std of the initial weights), got {m.init_std}")


def _validate_speech(d: DataConfig, m: ModelConfig) -> int:
    """corpus 'speech': the section filled in and checked; returns the tokenizer's vocabulary."""
    if d.tokenizer != "bytes" or d.path is not None:
        raise ConfigError("data.tokenizer / data.path: not used with corpus 'speech' (transcripts are characters "
                          "of data.speech.alphabet; a corpus folder is data.speech.path); remove them")
    if getattr(FAMILY.entry(m.family).config_cls, "inputs", "tokens") != "audio":
        speech = [k for k in FAMILY.kinds() if getattr(FAMILY.entry(k).config_cls, "inputs", "") == "audio"]
        raise ConfigError(f"model.family: '{m.family}' reads tokens, not audio; allowed with corpus 'speech': "
                          f"{', '.join(speech)}")
    s = d.speech = d.speech if d.speech is not None else SpeechDataConfig()
    for k, lo in (("n_train", 1), ("n_valid", 1), ("n_test", 1), ("seed", 0), ("max_new_tokens", 0)):
        v = getattr(s, k)
        if v < lo or v >= INT_LIMIT:
            raise ConfigError(f"data.speech.{k}: must be an integer ≥ {lo}, got {v}")
    if not s.alphabet or len(set(s.alphabet)) != len(s.alphabet):
        raise ConfigError(f"data.speech.alphabet: must be characters without repeats, got {s.alphabet!r}")
    from archlab.data.speech.manifest import normalise_text

    odd = sorted({c for c in s.alphabet if normalise_text(f"a{c}a") != f"a{c}a"})
    if odd:
        raise ConfigError(f"data.speech.alphabet: {''.join(odd)!r} never occur in normalised transcripts "
                          "(lowercase letters, digits, space, in-word apostrophe); remove them")
    if s.path is not None and not str(s.path).strip():
        raise ConfigError("data.speech.path: empty; give a corpus folder or leave it out for the generated corpus")
    return len(s.alphabet) + 3  # <|endoftext|>, <|startoftranscript|>, <unk>


def _validate_data(d: DataConfig, m: ModelConfig) -> None:
    tok_vocab = 256 if d.tokenizer == "bytes" else d.bpe_vocab
    if d.corpus == "speech":
        tok_vocab = _validate_speech(d, m)
    elif d.speech is not None:
        raise ConfigError(f"data.speech: only used with data.corpus: speech (corpus is '{d.corpus}')")
    elif getattr(FAMILY.entry(m.family).config_cls, "inputs", "tokens") == "audio":
        raise ConfigError(f"model.family: '{m.family}' reads audio; set data.corpus: speech")
    if d.corpus == "task":
        if d.task is None:
            raise ConfigError("data.task: required for corpus 'task', e.g. data.task.kind=counting; "
                              f"allowed kinds: {', '.join(TASK.kinds())}")
        if d.tokenizer != "bytes" or d.path is not None:
            raise ConfigError("data.tokenizer / data.path: not used with corpus 'task' (the task defines its "
                              "vocabulary and generates its data); remove them")
        tok_vocab = len(d.task.vocabulary())
    elif d.task is not None:
        raise ConfigError(f"data.task: only used with data.corpus: task (corpus is '{d.corpus}')")
    if d.corpus == "stdlib" and d.path is not None:
        raise ConfigError("data.path: not used with corpus 'stdlib' (the embedded standard library); "
                          "remove it, or set data.corpus: path to train on that file")
    # checked whatever the tokenizer, so a wrong value never waits for the day bpe is switched on
    if not 257 <= d.bpe_vocab <= 65536:
        raise ConfigError(f"data.bpe_vocab: must be in 257..65536, got {d.bpe_vocab}")
    if m.vocab_size is None:
        m.vocab_size = tok_vocab
    elif m.vocab_size < tok_vocab:
        raise ConfigError(f"model.vocab_size: {m.vocab_size} is smaller than the tokenizer's {tok_vocab}")
    if d.corpus in ("path", "enwik8") and not d.path:
        raise ConfigError(f"data.path: required for corpus '{d.corpus}' (a local file or folder)")


def _validate_train(t: TrainConfig) -> None:
    if t.method not in METHOD:
        raise ConfigError(f"train.method: {t.method!r} is not allowed; allowed: {', '.join(METHOD.kinds())}")
    if t.method == "forward_gradient":
        t.forward_gradient = t.forward_gradient or ForwardGradientConfig()
        t.forward_gradient.check()
    elif t.forward_gradient is not None:
        raise ConfigError(f"train.forward_gradient: only read when train.method is forward_gradient "
                          f"(it is {t.method}); leave it out")
    budgets = [k for k in BUDGET_KEYS if getattr(t, k) is not None]
    if len(budgets) > 1:
        raise ConfigError(f"train: give exactly one budget (steps, tokens or seconds), got {', '.join(budgets)}")
    for k in budgets:
        if getattr(t, k) <= 0:
            raise ConfigError(f"train.{k}: the budget must be positive, got {getattr(t, k)}")
    for name, (interval, why) in _TRAIN_RANGES.items():
        _check_range(getattr(t, name), f"train.{name}", interval, why)
    if t.batch % t.grad_accum:
        raise ConfigError(f"train.grad_accum: {t.grad_accum} must divide train.batch {t.batch}")
    # Whether CUDA or MPS is present is the trainer's question; the spelling is settled here.
    if not DEVICE.fullmatch(t.device):
        raise ConfigError(f"train.device: '{t.device}' is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
    if not isinstance(t.eval_at, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < INT_LIMIT for s in t.eval_at):
        raise ConfigError(f"train.eval_at: expected a list of step numbers ≥ 0 (0: before the first step), "
                          f"got {t.eval_at!r}")


# What train.method forward_gradient is verified on: torch.func.jvp through the model equals the
# gradient's directional derivative (tests/test_forward_gradient.py). Schemes with learned or
# memoised tables, CoPE's and the sliding-window kernel's autograd Functions, and the speech
# and SAFU families either fail under forward mode or give a wrong derivative silently.
FORWARD_MODE_FAMILIES = ("lm", "hierarchical")
FORWARD_MODE_POSITIONS = ("none", "rope", "sinusoidal", "alibi")
FORWARD_MODE_MIXERS = ("attention", "conv_attention", "memory", "retention")


def _check_forward_mode(m: ModelConfig) -> None:
    where = "train.method: forward_gradient"
    if m.family not in FORWARD_MODE_FAMILIES:
        raise ConfigError(f"{where} needs model.family {' or '.join(FORWARD_MODE_FAMILIES)} (forward mode is "
                          f"verified there), got '{m.family}'")
    positions = [m.position] + [lc.position for lc in m.layer_configs() if lc.position is not None]
    for pos in positions:
        learned = [k for k in ("learn_freq", "learn_scale", "learn_phase") if getattr(pos, k, False)]
        if pos.kind not in FORWARD_MODE_POSITIONS or learned:
            what = f"'{pos.kind}' with {', '.join(learned)}" if learned else f"'{pos.kind}'"
            raise ConfigError(f"{where}: position {what} has no verified forward mode; allowed: "
                              f"{', '.join(FORWARD_MODE_POSITIONS)} (rope without learned knobs)")
    for i, lc in enumerate(m.layer_configs()):
        if lc.mixer.kind not in FORWARD_MODE_MIXERS:
            raise ConfigError(f"{where}: layer {i}'s mixer '{lc.mixer.kind}' has no verified forward mode; "
                              f"allowed: {', '.join(FORWARD_MODE_MIXERS)}")


def _require_budget(t: TrainConfig) -> None:
    """A silent default budget (it used to be 1000 steps) trains for a length nobody chose."""
    if all(getattr(t, k) is None for k in BUDGET_KEYS):
        raise ConfigError("train: no budget; set exactly one of train.steps, train.tokens or train.seconds, "
                          "e.g. --set train.steps=1000")


def _validate(cfg: Config, require_budget: bool = True) -> Config:
    m, t, d = cfg.model, cfg.train, cfg.data
    _validate_model(m)
    _validate_data(d, m)
    _validate_train(t)
    if t.dynamics:
        from archlab.catalog.dynamics import parse_dynamics

        t.dynamics = parse_dynamics(t.dynamics, {"model": m, "train": t})
    if t.method == "forward_gradient":
        _check_forward_mode(m)
    if t.warm_start is not None:
        t.warm_start = parse_warm_start(t.warm_start, {"model": m, "train": t})
        if t.warm_start.parts and d.corpus in ("task", "speech"):
            raise ConfigError(f"train.warm_start: reads a text corpus's token stream; corpus '{d.corpus}' has none "
                              "(allowed: stdlib, path, enwik8)")
    layers = m.layer_configs()  # parses overrides, raising on bad keys
    ctx = {"model": m, "train": t}
    checks = [(m.position, "model.position", ctx)]
    for i, lc in enumerate(layers):  # a layer's parts also see the layer's resolved config
        checks += [(getattr(lc, n), f"model.layers[{i}].{n}", {**ctx, "layer": lc})
                   for n in ("mixer", "ffn", "norm", "position")]
        checks.append((lc.norm.placement, f"model.layers[{i}].norm.placement", {**ctx, "layer": lc}))
    for p, where, part_ctx in checks:
        if p is not None and hasattr(p, "check"):
            p.check(part_ctx, where)
    for i, lc in enumerate(layers):
        if lc.position is not None and getattr(lc.position, "embed_only", False):
            raise ConfigError(
                f"model.layers[{i}].position: '{lc.position.kind}' acts on the embeddings and can only be "
                "set as model.position; per layer only rotary/bias schemes are allowed"
            )
    if FAMILY.entry(m.family).config_cls is PartConfig and m.family_options:
        raise ConfigError(f"model.family_options: family '{m.family}' takes no options, got {', '.join(m.family_options)}")
    family_cfg = m.family_config()
    if hasattr(family_cfg, "check"):
        family_cfg.check({**ctx, "data": d}, "model.family_options")
    if require_budget:  # last, so that any other mistake in a budget-less config is reported first
        _require_budget(t)
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a duplicated variant or option is
    almost always a mistake, so refuse it."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, collections.abc.Hashable):
            raise ConfigError(f"a key must be a name, got {key!r} (line {key_node.start_mark.line + 1})")
        if key in seen:
            raise ConfigError(f"duplicate key '{key}' (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """``(line N): problem`` of a YAML error, on one line."""
    line = getattr(getattr(e, "problem_mark", None), "line", None)
    at = f" (line {line + 1})" if line is not None else ""
    problem = getattr(e, "problem", None) or ""
    return f"{at}: {problem.splitlines()[0]}" if problem.strip() else at


def _load_text(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise ConfigError("nested too deeply") from None


def load_yaml(path: str | Path, what: str = "file") -> dict:
    """Read a YAML mapping with one-line errors (missing, unreadable, not UTF-8, bad YAML,
    duplicate keys, empty, not a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the {what} as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
    try:
        raw = _load_text(text)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:  # includes the ConstructorError of tags such as !!python/object
        raise ConfigError(f"{p}: not valid YAML{_yaml_problem(e)}") from None
    if raw is None:
        # An empty file used to mean "the full default model": almost always the wrong file.
        raise ConfigError(f"{what} {p} is empty (or only comments); expected a mapping such as 'train: {{steps: 1000}}'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def parse_config(raw: dict | None, require_budget: bool = True) -> Config:
    """Typed, validated Config from a plain dict (as read from YAML).

    ``require_budget=False`` is for callers that only describe the model (``archlab info``):
    a config without train.steps/tokens/seconds is then accepted and its budget left unset."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    cfg = from_dict(Config, raw or {}, "")
    return _validate(cfg, require_budget=require_budget)


def _budgets_set(items: list[tuple[str, Any]]) -> set[str]:
    """The budget keys that ``--set`` items give a value (``train.steps=200``, ``train={steps: 200}``)."""
    out = set()
    for key, value in items:
        if key in (f"train.{k}" for k in BUDGET_KEYS) and value is not None:
            out.add(key.split(".", 1)[1])
        elif key == "train" and isinstance(value, dict):
            out |= {k for k in BUDGET_KEYS if value.get(k) is not None}
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                require_budget: bool = True) -> Config:
    """Read a YAML config (or start from defaults), apply ``--set`` overrides, validate.

    A budget given by an override replaces the file's budget (``--set train.steps=200`` on a
    file with ``train.tokens``): there is exactly one budget, so naming one is choosing it.
    ``require_budget=False``: see :func:`parse_config`."""
    raw = load_yaml(path, "config file") if path is not None else {}
    items = override_items(overrides)
    chosen = _budgets_set(items)
    if chosen and isinstance(raw.get("train"), dict):
        raw = {**raw, "train": {k: v for k, v in raw["train"].items() if k not in BUDGET_KEYS or k in chosen}}
    raw = _apply_items(raw, items)
    return parse_config(raw, require_budget=require_budget)


def replace(cfg: Config, **sections: Any) -> Config:
    return dataclasses.replace(cfg, **sections)
