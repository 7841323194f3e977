"""Learning-dynamics controllers: the rule on scripted losses, clamping, the change reaching
the model, exact resume, logging, off by default, one-line config errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from archlab.config import ConfigError, load_config
from archlab.models import build_model
from archlab.nn.positional.rope import RotaryEmbedding
from archlab.train import Trainer
from archlab.train.checkpoint import CHECKPOINT, read_checkpoint
from archlab.train.dynamics import CONTROLLER, Controller, build_controllers, restore
from tests.test_train import Kill, KillAt, params, tiny


def controller(kind: str = "rope_base", value: float = 100.0, **knobs) -> tuple[Controller, list]:
    """A controller of ``kind`` on a fake target that records every write."""
    writes: list = []
    cfg = CONTROLLER.parse({"kind": kind, **knobs}, "test")
    return Controller(name=kind, cfg=cfg, read=lambda: value, write=writes.append,
                      integer=kind == "window"), writes


def drive(ctrl: Controller, losses: list[float]) -> list:
    """Feed one step record per loss (NaN: a skipped step); the applied value after each step."""
    out = []
    for step, loss in enumerate(losses, start=1):
        rec = {"step": step, "loss": loss}
        if math.isnan(loss):
            rec["skipped"] = True
        ctrl.after_step(None, step, rec)
        assert rec[f"dynamics/{ctrl.kind}"] == ctrl.applied
        out.append(ctrl.applied)
    return out


# ----------------------------------------------------------------------------- the rule


def test_rule_on_scripted_losses():
    # decay 0.5, check every 2 steps: EMA 4, 4 | 3, 2.5 | 2.5, 2.5 | 2.5 ... (step 5 skipped)
    ctrl, writes = controller(value=100.0, every=2, decay=0.5, threshold=0.1, factor=2.0, min=50.0, max=1000.0)
    losses = [4, 4, 2, 2, math.nan, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    values = drive(ctrl, losses)
    # step 2: first check, reference 4 recorded; step 4: (4 − 2.5)/4 = 0.375 ≥ 0.1, left alone;
    # step 6: EMA 2.5 (the skipped step did not move it), no improvement → ×2; then ×2 every
    # check until the clamp at 1000.
    assert values == [100, 100, 100, 100, 100, 200, 200, 400, 400, 800, 800, 1000, 1000, 1000]
    assert writes == [200, 400, 800, 1000]
    assert ctrl.ema == 2.5 and ctrl.ref == 2.5 and ctrl.changes == 4


def test_relax_divides_on_improvement_and_start_delays_checks():
    ctrl, _ = controller(value=1000.0, every=1, decay=0.0, threshold=0.1, factor=2.0, relax=0.5, start=3,
                         min=100.0, max=1e6)
    # decay 0: EMA = the loss. Step 3: first check (start); step 4: 10 → 5 improves → ÷2;
    # step 5: 5 → 5 stalls → ×2; step 6: 5 → 1 improves → ÷2.
    assert drive(ctrl, [10, 10, 10, 5, 5, 1]) == [1000, 1000, 1000, 500, 1000, 500]


def test_clamp_at_min_and_integer_window():
    ctrl, writes = controller("dropout", value=0.1, every=1, decay=0.0, factor=0.5, min=0.04)
    assert drive(ctrl, [3, 3, 3, 3]) == [0.1, 0.05, 0.04, 0.04]
    assert writes == [0.05, 0.04]
    # the window keeps its unrounded value, so a factor of 1.5 still accumulates
    ctrl, writes = controller("window", value=16.0, every=1, decay=0.0, factor=1.5, min=16, max=100)
    assert drive(ctrl, [3] * 7) == [16, 24, 36, 54, 81, 100, 100]
    assert writes == [24, 36, 54, 81, 100] and all(isinstance(w, int) for w in writes)


def test_state_round_trip_writes_the_value():
    a, _ = controller(value=100.0, every=1, decay=0.5, factor=3.0, min=2.0, max=1e6)
    drive(a, [2, 2, 2])
    b, writes = controller(value=100.0, every=1, decay=0.5, factor=3.0, min=2.0, max=1e6)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # as stored in the checkpoint header
    assert writes == [900.0] and b.state_dict() == a.state_dict()
    assert drive(b, [2]) == drive(a, [2])


# ----------------------------------------------------------------------------- targets


def test_rope_base_change_reaches_the_model(tiny_config, build):
    model = build(tiny_config(), double=True)
    (ctrl,) = build_controllers([{"kind": "rope_base", "every": 1, "decay": 0.0, "factor": 4.0}], model)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(16)
    with torch.no_grad():
        before = model(ids, positions=pos).logits  # memoises cos/sin for this positions tensor
        drive(ctrl, [1.0, 1.0])  # second check: no improvement → base ×4
        assert model.position.base == 40000.0
        after = model(ids, positions=pos).logits  # same tensor: a stale memo would give `before`
        ref = build(tiny_config(**{"model.position.base": 40000.0}), double=True)
        ref.load_state_dict(model.state_dict())
        expect = ref(ids, positions=pos).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expect, atol=1e-12, rtol=0)


def test_every_rotary_module_is_set(tiny_config, build):
    model = build(tiny_config(**{"model.layers.overrides": {"1": {"position": {"kind": "rope"}}}}))
    ropes = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    assert len(ropes) == 2  # the shared scheme and layer 1's own
    (ctrl,) = build_controllers([{"kind": "rope_base", "every": 1, "decay": 0.0}], model)
    drive(ctrl, [1.0, 1.0])
    assert [r.base for r in ropes] == [20000.0, 20000.0]


def test_dropout_target(tiny_config, build):
    model = build(tiny_config(**{"model.dropout": 0.2}))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops
    (ctrl,) = build_controllers([{"kind": "dropout", "every": 1, "decay": 0.0}], model)
    drive(ctrl, [1.0, 1.0])
    assert {m.p for m in drops} == {0.1}


class Windowed(nn.Module):
    """Stand-in for a local-attention mixer (anything with ``window`` and ``set_window``)."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self.lin = nn.Linear(2, 2)

    def set_window(self, window: int) -> None:
        self.window = window


def test_window_target_with_stand_in_modules():
    model = nn.Sequential(Windowed(32), Windowed(32))
    (ctrl,) = build_controllers([{"kind": "window", "every": 1, "decay": 0.0, "max": 100}], model)
    drive(ctrl, [1.0, 1.0, 1.0, 1.0])
    assert [m.window for m in model] == [100, 100]
    with pytest.raises(ConfigError, match="differ"):
        build_controllers([{"kind": "window"}], nn.Sequential(Windowed(32), Windowed(64)))
    nameless = Windowed(32)
    del nameless.window
    with pytest.raises(ConfigError, match="int 'window' attribute; Windowed has none"):
        build_controllers([{"kind": "window"}], nameless)


def test_window_target_on_the_local_mixer(tiny_config, build):
    from archlab.registry import MIXER

    if "local" not in MIXER:
        pytest.skip("the local mixer is not registered in this checkout")
    model = build(tiny_config(**{"model.layers.default.mixer": {"kind": "local", "window": 4}}), double=True)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    (ctrl,) = build_controllers([{"kind": "window", "every": 1, "decay": 0.0, "min": 4, "max": 16}], model)
    drive(ctrl, [1.0, 1.0])
    assert [b.mixer.window for b in model.blocks] == [8, 8]
    with torch.no_grad():
        after = model(ids).logits
    ref = build(tiny_config(**{"model.layers.default.mixer": {"kind": "local", "window": 8}}), double=True)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(after, ref(ids).logits, atol=1e-12, rtol=0)
    assert not torch.allclose(before, after)


# ----------------------------------------------------------------------------- in the trainer


DYN = ["train.dynamics=[{kind: rope_base, every: 2, decay: 0.5, threshold: 0.2, factor: 1.5}]"]


def train_records(run_dir) -> list[dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r]


def test_resume_is_exact_with_a_controller(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, *DYN)
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.fit()
    base = straight.model.position.base
    assert base != 10000.0  # the controller acted, so the comparison below means something
    broken = Trainer(cfg, tmp_path / "b", progress=False, callbacks=[KillAt(10)])
    with pytest.raises(Kill):
        broken.fit()
    at_kill = broken.model.position.base
    resumed = Trainer(cfg, tmp_path / "b", progress=False, resume=True)
    assert resumed.model.position.base == at_kill  # restored from the checkpoint, not the config's 10000
    resumed.fit()
    assert resumed.model.position.base == base
    a, b = params(straight.model), params(resumed.model)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.callbacks[0].state_dict() == straight.callbacks[0].state_dict()


def test_values_are_logged_and_checkpointed(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, *DYN)
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    tr.fit()
    train = train_records(tmp_path / "r")
    logged = [r["dynamics/rope_base"] for r in train]
    assert len(logged) == 4 and logged[-1] == tr.model.position.base
    assert len(set(logged)) > 1
    state = read_checkpoint(tmp_path / "r" / CHECKPOINT)[1]["state"]
    assert state["callbacks"]["dynamics.rope_base"]["value"] == tr.model.position.base
    # a model rebuilt from the config alone has the initial base; restore() puts the adapted one back
    fresh = build_model(cfg.model)
    assert fresh.position.base == 10000.0
    restore(fresh, cfg.train.dynamics, state)
    assert fresh.position.base == tr.model.position.base
    # and opening the run (archlab eval / generate / export) restores it too
    from archlab.train.run import load_run

    assert load_run(tmp_path / "r").model.position.base == tr.model.position.base



def test_hf_export_carries_the_adapted_base(corpus, tmp_path):
    """The exported config holds the adapted rotary base (not the config's initial one), and the
    folder reloads through transformers to the trained model's logits."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    import archlab  # noqa: F401  (registers the HF classes)
    from archlab.hf.export import export_run
    from archlab.train.run import load_run

    cfg = tiny(corpus, tmp_path, *DYN)
    Trainer(cfg, tmp_path / "r", progress=False).fit()
    run = load_run(tmp_path / "r")
    adapted = run.model.position.base
    assert adapted != 10000.0
    export_run(tmp_path / "r", tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["archlab"]["position"]["base"] == adapted
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    run.model.eval()
    with torch.no_grad():
        want = run.model(ids).logits
        torch.testing.assert_close(hf(ids).logits, want, rtol=0, atol=1e-6)
        # the base matters: the same weights at the initial base give other logits
        run.model.position.set_base(10000.0)
        assert not torch.allclose(run.model(ids).logits, want, atol=1e-4)


def test_hf_export_refuses_an_adapted_dropout(corpus, tmp_path):
    """Dropout has no config knob that reproduces the controller (it adapts nn.Dropout layers
    only): refused in one line rather than exported with the initial rate."""
    pytest.importorskip("transformers")
    from archlab.hf.export import export_run

    cfg = tiny(corpus, tmp_path, "model.dropout=0.2",
               "train.dynamics=[{kind: dropout, every: 2, decay: 0.5, threshold: 0.2, factor: 0.5}]")
    Trainer(cfg, tmp_path / "r", progress=False).fit()
    with pytest.raises(ConfigError, match="dropout") as e:
        export_run(tmp_path / "r", tmp_path / "hf")
    assert "\n" not in str(e.value)


def test_off_by_default_changes_nothing(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, "train.steps=6", "train.log_every=3")
    assert cfg.train.dynamics == []
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    assert not any(isinstance(c, Controller) for c in tr.callbacks)
    tr.fit()
    assert tr.model.position.base == 10000.0
    assert not any(k.startswith("dynamics/") for r in train_records(tmp_path / "r") for k in r)


def test_controller_without_its_target_is_refused_at_build(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, "model.position.kind=alibi", "train.dynamics=[rope_base]")
    with pytest.raises(ConfigError, match=r"^train.dynamics\[0\]: kind 'rope_base' needs a rotary"):
        Trainer(cfg, tmp_path / "r", progress=False)
    cfg = tiny(corpus, tmp_path, "train.dynamics=[window]")
    with pytest.raises(ConfigError, match=r"kind 'window' needs local attention"):
        Trainer(cfg, tmp_path / "w", progress=False)
    cfg = tiny(corpus, tmp_path, "train.dynamics=[{kind: rope_base, max: 5000}]")
    with pytest.raises(ConfigError, match=r"rotary base 10000 is outside \[min, max\] = \[100, 5000\]"):
        Trainer(cfg, tmp_path / "m", progress=False)


# ----------------------------------------------------------------------------- config


def test_config_normalises_specs():
    cfg = load_config(None, ["train.dynamics=[rope_base, {kind: dropout, every: 5}]", "model.dropout=0.1", "train.steps=1"])
    assert cfg.train.dynamics[0]["kind"] == "rope_base" and cfg.train.dynamics[0]["factor"] == 2.0
    assert cfg.train.dynamics[1] == {**cfg.train.dynamics[1], "kind": "dropout", "every": 5, "factor": 0.5}
    again = load_config(None, {"train.dynamics": cfg.train.dynamics, "model.dropout": 0.1, "train.steps": 1})
    assert again.train.dynamics == cfg.train.dynamics


@pytest.mark.parametrize("spec, needle", [
    ("[{kind: rope_bass}]",
     "train.dynamics[0].kind: unknown dynamics kind 'rope_bass'; allowed: dropout, rope_base, window"),
    ("[{kind: rope_base, factr: 2}]", "train.dynamics[0].factr: unknown key for kind 'rope_base'"),
    ("[{kind: rope_base, factor: 1}]", "train.dynamics[0].factor: must be positive and not 1"),
    ("[{kind: rope_base, every: 0}]", "train.dynamics[0].every: must be a positive"),
    ("[{kind: rope_base, decay: 1.0}]", "train.dynamics[0].decay: must be in [0, 1)"),
    ("[{kind: rope_base, min: 1}]", "train.dynamics[0].min: a rotary base must stay > 1"),
    ("[{kind: rope_base, min: 500, max: 200}]", "train.dynamics[0]: min 500.0 must be ≤ max 200.0"),
    ("[{kind: dropout, max: 1.0}]", "train.dynamics[0]: dropout range"),
    ("[dropout]", "train.dynamics[0]: the dropout controller needs model.dropout > 0"),
    ("[rope_base, {kind: rope_base, every: 3}]", "train.dynamics[1]: a second 'rope_base' controller"),
    ("rope_base", "train.dynamics: expected a list"),
])
def test_config_errors(spec, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.dim=32", "model.depth=2", f"train.dynamics={spec}"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(needle), msg


def test_adapted_window_is_written_into_every_local_mixer_config(tiny_config, build):
    """adapted_model_config: the window the controller left on the model goes into each local
    mixer's config, and a model built from that config alone equals the adapted one."""
    from archlab.train.dynamics import adapted_model_config

    cfg = tiny_config(**{"model.layers.default.mixer": {"kind": "local", "window": 4}})
    model = build(cfg)
    specs = [{"kind": "window", "min": 2, "max": 64}]
    ctrl = build_controllers(specs, model)[0]
    ctrl.value = 9.0
    ctrl.write(ctrl.applied)  # what an adaptation step does
    adapted = adapted_model_config(cfg.model, model, specs)
    assert adapted.layers.default.mixer.window == 9 and cfg.model.layers.default.mixer.window == 4
    fresh = build(dataclasses.replace(cfg, model=adapted))
    fresh.load_state_dict(model.state_dict())
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)
        assert not torch.allclose(build(cfg)(ids).logits, model(ids).logits)  # the window matters
