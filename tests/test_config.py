"""Configuration: every mistake is a one-line ConfigError naming the key; overrides merge right."""

from __future__ import annotations

import pytest
import yaml

from archlab.catalog.ffn import FFNConfig, SwiGLUConfig
from archlab.catalog.norms import LayerNormConfig, NormConfig
from archlab.catalog.residual import LAuReLConfig
from archlab.catalog.positions import AlibiConfig, RopeConfig, T5Config
from archlab.config import Config, ConfigError, apply_overrides, load_config, parse_config
from archlab.registry import POSITION, PartConfig


def load(*sets: str, path=None):
    """``load_config`` with a budget first (a config must have one; later items may replace it)."""
    return load_config(path, ["train.steps=10", *sets])


def config_error(*sets: str, path=None, tiny=True) -> str:
    """The message of the ConfigError that loading with these ``--set`` items raises."""
    base = ["model.dim=32", "model.depth=2", "model.heads=4", "train.seq_len=32", "train.batch=4",
            "train.steps=10"] if tiny else []
    with pytest.raises(ConfigError) as e:
        load_config(path, base + list(sets))
    msg = str(e.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    return msg


# ----------------------------------------------------------------------------- error paths


def test_unknown_top_level_key():
    msg = config_error("modle.dim=3")
    assert msg.startswith("modle: unknown key") and "allowed: data, model, train" in msg


def test_unknown_nested_keys():
    msg = config_error("model.positon.kind=rope")
    assert msg.startswith("model.positon: unknown key") and "position" in msg
    msg = config_error("train.learning_rate=0.1")
    assert msg.startswith("train.learning_rate: unknown key") and "lr" in msg
    msg = config_error("model.position.fraktion=0.5")
    assert msg.startswith("model.position.fraktion: unknown key for kind 'rope'")
    assert "base" in msg and "fraction" in msg
    msg = config_error("model.layers.default.ffn.width=3")
    assert msg.startswith("model.layers.default.ffn.width: unknown key")


def test_unknown_kind_lists_allowed():
    msg = config_error("model.position.kind=nope")
    assert msg.startswith("model.position.kind: unknown position kind 'nope'")
    for kind in POSITION.kinds():
        assert kind in msg
    msg = config_error("model.layers.default.mixer.kind=mamba")
    assert msg.startswith("model.layers.default.mixer.kind: unknown mixer kind 'mamba'") and "attention" in msg
    msg = config_error("model.family=gpt")
    assert "model.family" in msg and "lm" in msg


@pytest.mark.parametrize(
    "item, key, needle",
    [
        ("model.dim=abc", "model.dim", "integer"),
        ("model.dim=3.5", "model.dim", "integer"),
        ("model.depth=true", "model.depth", "integer"),
        ("model.tie_embeddings=3", "model.tie_embeddings", "true or false"),
        ("train.lr=fast", "train.lr", "number"),
        ("train.precision=fp8", "train.precision", "allowed"),
        ("data.tokenizer=words", "data.tokenizer", "allowed"),
        ("model.position.base=big", "model.position.base", "number"),
        ("model.layers.default.norm.placement=middle", "model.layers.default.norm.placement.kind", "allowed"),
        ("model.kv_heads=two", "model.kv_heads", "expected"),
        ("model=3", "model", "mapping"),
    ],
)
def test_wrong_type(item, key, needle):
    msg = config_error(item)
    assert msg.startswith(f"{key}:") and needle in msg


def test_heads_must_divide_dim():
    msg = config_error("model.heads=5")
    assert "model.heads" in msg and "32" in msg
    # an explicit head_dim lifts the restriction
    assert load("model.dim=32", "model.heads=5", "model.head_dim=8").model.heads == 5


def test_kv_heads_must_divide_heads():
    msg = config_error("model.kv_heads=3")
    assert msg.startswith("model.kv_heads") and "model.heads" in msg


def test_one_budget_only():
    msg = config_error("train.tokens=1000")  # the tiny base already sets train.steps
    assert "train" in msg and "steps" in msg and "tokens" in msg


def test_grad_accum_must_divide_batch():
    msg = config_error("train.grad_accum=3")
    assert msg.startswith("train.grad_accum") and "train.batch" in msg


def test_learned_position_needs_table_for_seq_len():
    msg = config_error("model.position.kind=learned", "model.max_seq_len=16")
    assert msg.startswith("model.position") and "max_seq_len" in msg and "seq_len" in msg
    assert load("model.position.kind=learned", "model.max_seq_len=32", "train.seq_len=32")


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_per_layer_embed_only_scheme_refused(kind):
    msg = config_error(f"model.layers.overrides={{'1': {{position: {{kind: {kind}}}}}}}")
    assert msg.startswith("model.layers[1].position") and kind in msg


@pytest.mark.parametrize(
    "selector, needle",
    [("a", "bad layer selector 'a'"), ("1-", "bad layer selector"), ("0;1", "bad layer selector"),
     ("2", "layer 2 out of range"), ("-3", "layer -3 out of range"), ("1-4", "out of range")],
)
def test_bad_layer_selectors(selector, needle):
    msg = config_error(f"model.layers.overrides={{'{selector}': {{ffn: {{mult: 2}}}}}}")
    assert msg.startswith(f"model.layers.overrides.{selector}") and needle in msg


def test_bad_per_layer_part_key_names_the_layer():
    msg = config_error("model.layers.overrides={'1': {ffn: {width: 2}}}")
    assert msg.startswith("model.layers[1].ffn.width: unknown key")


def test_set_without_equals():
    msg = config_error("model.dim")
    assert "model.dim" in msg and "KEY=VALUE" in msg
    msg = config_error("model..dim=3")
    assert "model..dim" in msg


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  dim: [32\n  depth: 2\n")
    msg = config_error(path=p, tiny=False)
    assert str(p) in msg and "not valid YAML" in msg
    p.write_text("- a\n- b\n")
    assert "mapping" in config_error(path=p, tiny=False)
    p.write_text("model:\n  dim: 32\n  dim: 64\n")
    assert "duplicate key 'dim'" in config_error(path=p, tiny=False)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    msg = config_error(path=p, tiny=False)
    assert "not found" in msg and str(p) in msg


# ----------------------------------------------------------------------------- merging and overrides


def test_kind_change_resets_params(tmp_path):
    p = tmp_path / "rope.yaml"
    p.write_text("model:\n  position: {kind: rope, base: 500, fraction: 0.5}\ntrain: {steps: 10}\n")
    assert load_config(p).model.position == RopeConfig(kind="rope", base=500.0, fraction=0.5)
    cfg = load_config(p, ["model.position.kind=alibi"])
    assert cfg.model.position == AlibiConfig(kind="alibi")
    assert "base" not in cfg.to_dict()["model"]["position"]
    # the new kind starts from its own defaults plus what the override gives
    cfg = load_config(p, ["model.position={kind: t5, max_distance: 64}"])
    assert cfg.model.position == T5Config(kind="t5", num_buckets=32, max_distance=64)
    # the same kind keeps the file's params
    assert load_config(p, ["model.position.kind=rope"]).model.position.base == 500.0
    assert load_config(p, ["model.position.fraction=1.0"]).model.position == RopeConfig("rope", 500.0, 1.0)


def test_partial_part_refines_default_kind():
    """``--set model.position.base=500`` on the defaults sets rope's base, it is not an error."""
    assert load("model.position.base=500").model.position == RopeConfig("rope", 500.0, 1.0)
    ffn = load("model.layers.default.ffn.mult=2").model.layers.default.ffn
    assert ffn == SwiGLUConfig(kind="swiglu", mult=2.0)
    norm = load("model.layers.default.norm.placement=post").model.layers.default.norm
    assert norm == NormConfig(kind="rms", placement=PartConfig(kind="post"))
    laurel = load("model.layers.default.norm.placement.kind=laurel").model.layers.default.norm.placement
    assert laurel == LAuReLConfig(kind="laurel")  # a bare kind or a mapping: the same policy
    # a key the default kind does not have is still refused, naming the kind
    msg = config_error("model.position.num_buckets=8")
    assert msg.startswith("model.position.num_buckets: unknown key for kind 'rope'")


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.steps=10", "train.lr=3e-3", "train.tokens=2e6", "model.dim=64", "model.bias=true",
                             "model.tie_embeddings=false", "train.weight_decay=0", "train.steps=null",
                             "model.init_std=.05", "train.warmup=1_000"])
    assert cfg.train.lr == 0.003 and isinstance(cfg.train.lr, float)
    assert cfg.train.tokens == 2_000_000 and isinstance(cfg.train.tokens, int)
    assert cfg.model.dim == 64 and isinstance(cfg.model.dim, int)
    assert cfg.model.bias is True and cfg.model.tie_embeddings is False
    assert cfg.train.weight_decay == 0.0 and isinstance(cfg.train.weight_decay, float)
    assert cfg.train.steps is None and cfg.model.init_std == 0.05 and cfg.train.warmup == 1000
    raw = apply_overrides({"a": {"keep": 1}}, ["a.b=[1, 2.5, x]", "a.c={d: true}", "a.e=", "a.f=a=b"])
    assert raw == {"a": {"keep": 1, "b": [1, 2.5, "x"], "c": {"d": True}, "e": None, "f": "a=b"}}
    assert apply_overrides({}, {"x.y": 3}) == {"x": {"y": 3}}


def test_per_layer_selectors_resolve():
    cfg = load_config(None, [
        "train.steps=10", "model.depth=4",
        "model.layers.overrides={'0,2': {ffn: {mult: 2}}, '1-3': {norm: {kind: layer}}, "
        "'-1': {position: {kind: alibi}}}",
    ])
    layers = cfg.model.layer_configs()
    assert [lc.ffn.mult for lc in layers] == [2.0, 4.0, 2.0, 4.0]
    assert [lc.ffn.kind for lc in layers] == ["swiglu"] * 4  # refined, not replaced
    assert [lc.norm.kind for lc in layers] == ["rms", "layer", "layer", "layer"]
    assert isinstance(layers[1].norm, LayerNormConfig)
    assert [lc.position for lc in layers[:3]] == [None, None, None]
    assert layers[3].position == AlibiConfig("alibi")
    # selectors may overlap; later entries merge over earlier ones, and spaces are fine
    cfg = load_config(None, ["train.steps=10", "model.depth=3",
                             "model.layers.overrides={'0, 1': {ffn: {mult: 2}}, '1': {ffn: {kind: gelu}}}"])
    layers = cfg.model.layer_configs()
    assert layers[0].ffn == SwiGLUConfig("swiglu", 2.0)
    assert layers[1].ffn == FFNConfig("gelu", 4.0)  # kind change: gelu's defaults, not mult 2
    assert layers[2].ffn == SwiGLUConfig("swiglu", 4.0)


def test_defaults_validate_and_fill_in():
    cfg = load_config(None, ["train.steps=10"])
    assert isinstance(cfg, Config)
    assert cfg.model.vocab_size == 256  # from the byte tokenizer
    assert cfg.model.position == RopeConfig("rope")


def test_no_budget_is_refused_unless_only_the_model_is_described():
    """The README promises exactly one budget; a silent 1000 steps was nobody's choice."""
    msg = config_error(tiny=False)
    assert msg.startswith("train: no budget") and "train.steps" in msg and "train.seconds" in msg
    # other mistakes are reported first: the budget is not the only thing wrong
    assert config_error("model.dim=-1", tiny=False).startswith("model.dim")
    cfg = load_config(None, require_budget=False)  # `archlab info`: the model alone
    assert (cfg.train.steps, cfg.train.tokens, cfg.train.seconds) == (None, None, None)
    assert parse_config({}, require_budget=False).model.dim == cfg.model.dim
    with pytest.raises(ConfigError, match="no budget"):
        parse_config({})
    # require_budget=False only waives the budget, nothing else
    with pytest.raises(ConfigError, match="model.kv_heads"):
        load_config(None, ["model.kv_heads=0"], require_budget=False)


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["model.position={kind: t5, num_buckets: 16}", "model.kv_heads=2", "train.lr=1e-3"],
        ["model.position.kind=learned", "model.layers.overrides={'-1': {position: {kind: alibi}, ffn: gelu}}",
         "model.layers.default.norm={kind: layer, placement: post, bias: false}", "train.tokens=5000",
         "train.steps=null"],
    ],
)
def test_round_trip(sets, tmp_path):
    cfg = load_config(None, ["train.steps=10", *sets])
    again = parse_config(cfg.to_dict())
    assert again == cfg
    assert again.model.layer_configs() == cfg.model.layer_configs()
    # and through a YAML file
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(p) == cfg


# ----------------------------------------------------------------------------- budgets, devices, files


def test_a_set_budget_replaces_the_files_budget(tmp_path):
    """There is one budget: ``--set train.steps=200`` on a file with ``train.tokens`` chooses
    steps (it used to be refused as two budgets until one guessed ``train.tokens=null``)."""
    p = tmp_path / "cfg.yaml"
    p.write_text("train: {tokens: 2000000, batch: 4}\n")
    t = load_config(p, ["train.steps=200"]).train
    assert (t.steps, t.tokens, t.seconds, t.batch) == (200, None, None, 4)
    t = load_config(p, {"train": {"seconds": 30}}).train
    assert (t.steps, t.tokens, t.seconds) == (None, None, 30.0)
    assert load_config(p, ["train.tokens=5000"]).train.tokens == 5000
    assert load_config(p, ["train.steps=null"]).train.tokens == 2000000  # null chooses nothing
    # two budgets written together stay a mistake, in the file or on the command line
    assert "got steps, tokens" in config_error("train.steps=5", "train.tokens=5", tiny=False)
    p.write_text("train: {tokens: 2000000, steps: 10}\n")
    assert "exactly one budget" in config_error(path=p, tiny=False)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_spellings_accepted(device):
    assert load("train.device=" + device).train.device == device


@pytest.mark.parametrize("device, needle", [
    ("gpu", "cuda:N"), ("CUDA", "cuda:N"), ("cuda:0:1", "cuda:N"), ("cuda0", "cuda:N"), ("mps:0", "cuda:N"),
    ("cuda:-1", "cuda:N"), ("cuda:", "expected a string"), ("''", "empty string"),  # YAML: {cuda: null}
])
def test_device_spellings_refused(device, needle):
    msg = config_error(f"train.device={device}")
    assert msg.startswith("train.device") and needle in msg


def test_a_part_given_by_kind_then_refined():
    """``position=alibi`` then ``position.max_pos=...``: the keys refine that kind, not the default."""
    cfg = load("model.position=cope", "model.position.max_pos=16")
    assert cfg.model.position.kind == "cope" and cfg.model.position.max_pos == 16


def test_explicit_heads_and_kv_heads_are_not_replaced_by_defaults():
    cfg = load("model.dim=32", "model.heads=4", "model.kv_heads=2", "model.head_dim=4")
    assert (cfg.model.resolved_kv_heads(), cfg.model.resolved_head_dim()) == (2, 4)
    for key in ("kv_heads", "head_dim"):
        assert config_error(f"model.{key}=0").startswith(f"model.{key}: must be positive")


def test_empty_or_unreadable_files(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("# only a comment\n")
    msg = config_error(path=p, tiny=False)
    assert msg.startswith(f"config file {p} is empty")
    p.write_bytes(b"model: {dim: 32}\n# \xff\xfe\n")
    assert "not UTF-8" in config_error(path=p, tiny=False)
    p.write_text("model: !!python/object/apply:os.getcwd []\n")
    msg = config_error(path=p, tiny=False)
    assert "not valid YAML (line 1)" in msg and "python/object" in msg
