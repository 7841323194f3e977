"""Speech runs (data.corpus speech, families echo and whisper) through the ordinary trainer:
labels and batches, the character tokenizer in a run folder, exact resume, the WER/CER
evaluation against jiwer's definition, overfitting a handful of utterances, the Whisper
baseline's cached decoding, and the CLI around a speech run (eval, transcribe, generate's refusal)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from archlab.cli import main
from archlab.config import load_config
from archlab.data.speech.dataset import SpeechSampler
from archlab.data.speech.text import CharTokenizer
from archlab.data.tokenizer import check_tokenizer, load_tokenizer
from archlab.models import build_model
from archlab.models.lm import IGNORE_INDEX
from archlab.registry import ConfigError
from archlab.train import Trainer
from archlab.train.objectives import objective_for
from archlab.train.objectives.speech import check_lengths, evaluate_speech, load_splits
from tests.test_train import straight_and_resumed

WHISPER = ["model.family=whisper", "model.position.kind=sinusoidal", "model.layers.default.ffn.kind=gelu",
           "model.layers.default.norm.kind=layer"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("speech-cache")


def speech_cfg(cache, *extra, family=("model.family=echo",)):
    return load_config(None, [
        "model.dim=32", "model.depth=2", "model.heads=4", "model.max_seq_len=80", *family,
        "model.family_options.n_audio_ctx=300", "data.corpus=speech", f"data.cache_dir={cache}",
        "data.speech={n_train: 8, n_valid: 3, n_test: 3}", "train.seq_len=80", "train.batch=4", "train.steps=6",
        "train.eval_every=3", "train.eval_tokens=160", "train.log_every=3", "train.ckpt_every=3", "train.warmup=1",
        "train.tensorboard=false", *extra])


@pytest.fixture(scope="module")
def splits(cache):
    cfg = speech_cfg(cache)
    return cfg, load_splits(cfg, CharTokenizer(cfg.data.speech.alphabet))


def test_objective_and_vocabulary(cache):
    cfg = speech_cfg(cache)
    assert objective_for(cfg).kind == "speech" and objective_for(cfg).primary == "wer"
    assert cfg.model.vocab_size == len(cfg.data.speech.alphabet) + 3


def test_labels_frame_each_transcript(splits):
    cfg, sp = splits
    train = sp["train"]
    assert len(train) == 8 and train.features.shape == (8, 80, 600) and train.features.dtype == torch.float16
    feats, labels = train.batch(np.array([0, 1]), ignore_index=IGNORE_INDEX)
    tok = CharTokenizer(cfg.data.speech.alphabet)
    for row, text in zip(labels.tolist(), train.texts[:2]):
        assert row[0] == tok.sot_id
        n = len(text)
        assert tok.decode(row[1:n + 1]) == text and row[n + 1] == tok.eot_id
        assert all(v == IGNORE_INDEX for v in row[n + 2:])
    assert labels.shape[1] == max(len(t) for t in train.texts[:2]) + 2 and feats.dtype == torch.float32


def test_sampler_is_a_function_of_seed_and_step(splits):
    _, sp = splits
    a = SpeechSampler(sp["train"], batch_size=4, seed=1, ignore_index=IGNORE_INDEX)
    b = SpeechSampler(sp["train"], batch_size=4, seed=1, ignore_index=IGNORE_INDEX)
    assert all(torch.equal(x, y) for x, y in zip(a.batch(5), b.batch(5)))
    assert not np.array_equal(a.global_indices(5), a.global_indices(6))
    halves = [SpeechSampler(sp["train"], batch_size=4, seed=1, ignore_index=IGNORE_INDEX, rank=r, world_size=2)
              for r in (0, 1)]
    got = np.concatenate([h.global_indices(5)[h.rank * 2:(h.rank + 1) * 2] for h in halves])
    assert np.array_equal(got, a.global_indices(5))


def test_tokenizer_round_trips_through_the_run_folder(tmp_path):
    tok = CharTokenizer("zyx' ")
    tok.save(tmp_path)
    back = check_tokenizer(load_tokenizer(tmp_path), kind="chars", model_vocab=tok.vocab_size, where="t")
    assert back.alphabet == tok.alphabet == " 'xyz" and back.encode("x y'z") == tok.encode("x y'z")
    with pytest.raises(ValueError, match="chars"):
        check_tokenizer(back, kind="bytes", model_vocab=300, where="t")


def test_lengths_are_checked_before_training(splits):
    cfg, sp = splits
    longest = max(s.max_text_len for s in sp.values())
    with pytest.raises(ConfigError, match=rf"train.seq_len: {longest - 1} is shorter .* allowed: ≥ {longest}"):
        check_lengths(sp, seq_len=longest - 1, max_seq_len=80)
    check_lengths(sp, seq_len=longest, max_seq_len=80)


@pytest.mark.parametrize("family", [("model.family=echo",), tuple(WHISPER)], ids=["echo", "whisper"])
def test_resume_is_exact(cache, tmp_path, family):
    straight, _ = straight_and_resumed(speech_cfg(cache, family=family), tmp_path, kill_at=3)
    assert set(straight.evaluate()) >= {"loss", "wer", "cer"}


def test_wer_is_jiwers_on_the_greedy_transcripts(splits):
    import jiwer

    cfg, sp = splits
    tok = CharTokenizer(cfg.data.speech.alphabet)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    res = evaluate_speech(model, sp["validation"], tokenizer=tok, batch_size=2)
    # the same hypotheses by hand: one utterance at a time, no cache
    from archlab.models.echo import greedy_decode

    hyps = []
    for i in range(len(sp["validation"])):
        feats, _ = sp["validation"].batch(np.array([i]), ignore_index=IGNORE_INDEX)
        ids = greedy_decode(model, feats, torch.tensor([[tok.sot_id]]), use_cache=False, eos_token_id=tok.eot_id,
                            max_new_tokens=max(len(t) for t in sp["validation"].tokens) + 10)
        hyps.append(tok.decode(ids[0, 1:]).strip())
    refs = sp["validation"].texts
    assert res["wer"] == pytest.approx(jiwer.wer(refs, hyps)) and res["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert res["utterances"] == 3 and math.isfinite(res["loss"])


@pytest.mark.parametrize("family", [("model.family=echo",), tuple(WHISPER)], ids=["echo", "whisper"])
def test_a_handful_of_utterances_is_learnt(cache, tmp_path, family):
    """Four utterances, trained on alone, are transcribed back from their audio (the first
    characters can only come from the encoder: the decoder alone cannot tell the four apart)."""
    cfg = speech_cfg(cache, "train.steps=160", "train.lr=3e-3", "train.eval_every=1000", "model.dim=64",
                     "data.speech={n_train: 4, n_valid: 3, n_test: 3}", family=family)
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    tr.fit()
    ev = tr.evaluate("train", max_tokens=10_000)
    assert ev["utterances"] == 4 and ev["loss"] < 0.1 * math.log(cfg.model.vocab_size), ev
    assert ev["cer"] < 0.1, ev


def test_whisper_cached_decoding_equals_recomputation(splits):
    cfg, sp = splits
    wcfg = load_config(None, ["model.dim=32", "model.depth=2", "model.heads=4", "model.max_seq_len=80", *WHISPER,
                              "model.family_options.n_audio_ctx=300", "data.corpus=speech", "train.steps=1"])
    torch.manual_seed(0)
    model = build_model(wcfg.model).eval()
    feats, labels = sp["train"].batch(np.array([0, 1]), ignore_index=IGNORE_INDEX)
    ids = torch.where(labels == IGNORE_INDEX, 0, labels)[:, :12]
    with torch.no_grad():
        memory = model.encode(feats)
        full = model.decode(ids, memory)
        cache = model.init_cache()
        steps = torch.cat([model.decode(ids[:, :5], memory, cache)] +
                          [model.decode(ids[:, t:t + 1], memory, cache) for t in range(5, 12)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    # and the decoder is causal: a later token does not change earlier logits
    other = ids.clone()
    other[:, 8] = (other[:, 8] + 1) % cfg.model.vocab_size
    with torch.no_grad():
        moved = model.decode(other, memory)
    torch.testing.assert_close(moved[:, :8], full[:, :8])
    assert not torch.allclose(moved[:, 8:], full[:, 8:])


@pytest.mark.parametrize("sets, needle", [
    (["model.family=lm"], "model.family: 'lm' reads tokens, not audio; allowed with corpus 'speech': echo, whisper"),
    (["data.tokenizer=bpe"], "data.tokenizer / data.path: not used with corpus 'speech'"),
    (["data.speech.alphabet=abca"], "data.speech.alphabet: must be characters without repeats"),
    (["data.speech.alphabet=abC"], "data.speech.alphabet: 'C' never occur in normalised transcripts"),
    (["data.speech.n_train=0"], "data.speech.n_train: must be an integer ≥ 1, got 0"),
    (["model.family=whisper", "model.position.kind=rope"], "model.position.kind: 'rope'; family 'whisper'"),
    ([*WHISPER, "model.family_options.audio_dim=64"], "model.family_options.audio_dim: 64; Whisper has one width"),
    (["model.family_options.audio_heads=3"], "model.family_options.audio_heads: 3 heads do not divide"),
    (["model.position.kind=conditional_rope"], "model.position.kind: 'conditional_rope' predicts its rotation"),
])
def test_bad_speech_configs_are_one_line(cache, sets, needle):
    with pytest.raises(ConfigError) as e:
        speech_cfg(cache, *sets)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_corpus_folder_errors_are_one_line(cache, tmp_path):
    (tmp_path / "corpus").mkdir()
    cfg = speech_cfg(cache, f"data.speech.path={tmp_path / 'corpus'}")
    with pytest.raises(ConfigError, match=r"has no train.jsonl, train.csv or train/ folder"):
        Trainer(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="train.seq_len: 8 is shorter"):
        Trainer(speech_cfg(cache, "train.seq_len=8"), tmp_path / "r2", progress=False)


def test_cli_eval_transcribe_and_generate(cache, tmp_path, capsys):
    cfg = speech_cfg(cache, "train.steps=2")
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).fit()
    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"wer"' in out and '"utterances": 3' in out
    wav = sorted((cache / "speech").glob("espeak-*/test/*.wav"))[0]
    assert main(["transcribe", str(run), str(wav), str(tmp_path / "missing.wav"), "--no-progress"]) == 2
    cap = capsys.readouterr()
    assert cap.out.startswith(str(wav) + "\t") and "missing.wav: no such file" in cap.err
    assert main(["transcribe", str(run), str(wav), "--beams", "2"]) == 2
    assert "--beams: a run folder decodes greedily" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "hi"]) == 2
    assert "is a speech recogniser" in capsys.readouterr().err
    assert main(["eval", str(run), "--seq-len", "10"]) == 2
    assert "--seq-len: not used for a speech run" in capsys.readouterr().err


@pytest.mark.parametrize("family", [("model.family=echo",), tuple(WHISPER)], ids=["echo", "whisper"])
def test_export_gives_the_runs_model_in_transformers(cache, tmp_path, capsys, family):
    from archlab.hf.export import export_run
    from archlab.train.run import load_run

    run = tmp_path / "run"
    Trainer(speech_cfg(cache, "train.steps=2", family=family), run, progress=False).fit()
    loaded = load_run(run)
    folder = export_run(loaded, tmp_path / "hf")
    sp = load_splits(loaded.cfg, loaded.tokenizer, ("test",))["test"]
    feats, labels = sp.batch(np.array([0, 1]), ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        ours = loaded.model.eval()(feats, targets=labels).logits
    if family[0] == "model.family=echo":
        from archlab.hf.echo import Echo

        hf = Echo.from_pretrained(folder).eval()
        state = loaded.model.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in hf.model.state_dict().items())
        wav = sorted((cache / "speech").glob("espeak-*/test/*.wav"))[:2]
        assert main(["transcribe", str(run), *map(str, wav), "--no-progress"]) == 0
        from_run = capsys.readouterr().out
        assert main(["transcribe", str(folder), *map(str, wav), "--no-progress"]) == 0
        assert capsys.readouterr().out == from_run  # the folder transcribes as the run does
    else:
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        hf = WhisperForConditionalGeneration.from_pretrained(folder).eval()
        assert WhisperFeatureExtractor.from_pretrained(folder).nb_max_frames == 600
    ids = torch.where(labels == IGNORE_INDEX, 0, labels)[:, :-1]
    with torch.no_grad():
        theirs = hf(input_features=feats, decoder_input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_compare_on_speech_echo_against_whisper(cache, tmp_path):
    """archlab compare on a speech experiment: WER is the default metric, Whisper a variant."""
    import textwrap

    from archlab.lab.compare import run_compare
    from archlab.lab.experiment import load_experiment

    (tmp_path / "base.yaml").write_text(textwrap.dedent(f"""\
        model: {{family: echo, dim: 32, depth: 1, heads: 4, max_seq_len: 80,
                family_options: {{n_audio_ctx: 300}}, layers: {{default: {{ffn: {{kind: gelu}}, norm: {{kind: layer}}}}}}}}
        data: {{corpus: speech, cache_dir: {cache}, speech: {{n_train: 8, n_valid: 3, n_test: 3}}}}
        train: {{batch: 4, seq_len: 80, warmup: 1, eval_every: 2, eval_tokens: 160, log_every: 1, tensorboard: false}}
        """))
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: s
        base: {tmp_path / 'base.yaml'}
        budget: {{steps: 2}}
        seeds: [0, 1]
        baseline: whisper
        eval: {{split: test}}
        variants:
          whisper: {{model.family: whisper, model.position: {{kind: sinusoidal}}}}
          echo: {{}}
        """))
    exp = load_experiment(p)
    assert exp.metric == "wer" and exp.metric_names() == ["wer", "cer", "loss"]
    res = run_compare(p, tmp_path / "out", progress=False, log=lambda s: None)
    assert len(res["runs"]) == 4
    for r in res["runs"]:
        assert r["status"] == "done" and r["utterances"] == 3
        assert all(np.isfinite(r[m]) and r[m] >= 0 for m in ("wer", "cer", "loss"))
        assert r["curve"] and "val_wer" in r["curve"][-1]
    assert "wer mean ± std" in (tmp_path / "out" / "report.md").read_text()
    bad = p.read_text().replace("eval: {split: test}", "eval: {split: test, seq_lens: [40]}")
    p.write_text(bad)
    with pytest.raises(ConfigError, match="eval.seq_lens: not used by a speech experiment"):
        load_experiment(p)


def test_the_shipped_speech_config_and_experiment_load():
    from pathlib import Path

    from archlab.lab.experiment import load_experiment
    from archlab.models.counting import count_parameters

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "echo_tiny.yaml", [])
    assert objective_for(cfg).kind == "speech" and cfg.model.family == "echo" and cfg.train.seconds == 1700
    assert count_parameters(build_model(cfg.model)) == 1_471_384  # the model of docs/results/echo_tiny
    exp = load_experiment(root / "experiments" / "echo_vs_whisper.yaml")
    assert exp.metric == "wer" and exp.baseline == "whisper" and len(exp.seeds) >= 3
    assert {c.model.family for c in exp.variants.values()} == {"echo", "whisper"}
