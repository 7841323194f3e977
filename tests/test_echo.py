"""Echo (the speech recogniser): the seed's snippet, the HF round trip, the encoder's
non-causality and the decoder's causality by perturbation, cross-attention over the whole
memory, cached decoding equal to recomputation, gradients to every parameter, activation
checkpointing (same gradients, less memory), and each config knob acting."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

import archlab.hf  # noqa: E402,F401  (registers the Auto classes)
from archlab.hf import Echo, EchoConfig  # noqa: E402

V = 40


def tiny(**kw) -> EchoConfig:
    base = dict(n_mels=16, n_audio_ctx=12, n_audio_state=16, n_audio_head=2, n_audio_layer=2, vocab_size=V,
                n_text_ctx=16, n_text_state=16, n_text_head=2, n_text_layer=2, max_rel_dist=4,
                bos_token_id=V - 2, eos_token_id=V - 2, pad_token_id=V - 2, decoder_start_token_id=V - 1)
    return EchoConfig(**{**base, **kw})


def make(seed: int = 0, **kw) -> Echo:
    torch.manual_seed(seed)
    return Echo(tiny(**kw)).double().eval()


def feats(B: int = 2, frames: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 16, frames, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tokens(B: int = 2, T: int = 9, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, V - 2, (B, T), generator=torch.Generator().manual_seed(seed))


def test_seed_snippet_runs_as_written(tmp_path):
    config = EchoConfig(n_mels=80, n_audio_ctx=30, n_audio_state=32, n_audio_head=4, n_audio_layer=2,
                        vocab_size=300, n_text_ctx=24, n_text_state=32, n_text_head=4, n_text_layer=2, max_rel_dist=15,
                        cross_attention=True, checkpointing=True, base=10000, bos_token_id=297, eos_token_id=297,
                        pad_token_id=297, decoder_start_token_id=298, is_encoder_decoder=True, init_std=0.02)
    model = Echo(config).to("cpu")
    model.apply_initialization()
    model.save_pretrained(tmp_path / "echo2")
    loaded = Echo.from_pretrained(tmp_path / "echo2")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-exact
    f, ids = torch.randn(1, 80, 60), torch.randint(0, 297, (1, 5))
    assert torch.equal(model.eval()(f, ids).logits, loaded(f, ids).logits)


def test_auto_class_loads_the_folder(tmp_path):
    from transformers import AutoConfig, AutoModelForSpeechSeq2Seq

    model = make()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is EchoConfig
    auto = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path, dtype=torch.float64)
    assert type(auto) is Echo
    f, ids = feats(), tokens()
    assert torch.equal(auto(f, ids).logits, model(f, ids).logits)


def test_initialization_follows_the_seed_scheme():
    m = Echo(tiny(init_std=0.05))
    emb = m.model.decoder.embed.weight
    assert abs(emb.std().item() - 0.05) < 0.01
    lin = m.model.decoder.blocks[0].ffn
    w = next(p for n, p in lin.named_parameters() if n.endswith("weight") and p.dim() == 2)
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5  # Xavier-uniform
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert torch.equal(m.model.encoder.norm.weight, torch.ones_like(m.model.encoder.norm.weight))
    assert torch.count_nonzero(m.model.encoder.conv1.bias) == 0
    before = {k: v.clone() for k, v in m.state_dict().items()}
    torch.manual_seed(123)
    m.apply_initialization()
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items())  # re-draws


def test_encoder_is_not_causal_and_decoder_is():
    m = make()
    f, ids = feats(), tokens()
    base = m.model.encoder(f)
    g = f.clone()
    g[:, :, -2:] += 1.0  # the last frames
    assert not torch.allclose(m.model.encoder(g)[:, 0], base[:, 0])  # the first position sees the end
    logits = m(f, ids).logits
    for p in range(ids.shape[1]):
        other = ids.clone()
        other[:, p] = (other[:, p] + 1) % (V - 2)
        out = m(f, other).logits
        assert torch.equal(out[:, :p], logits[:, :p]), f"token {p} leaked into earlier positions"
        assert not torch.allclose(out[:, p], logits[:, p])


def test_cross_attention_sees_the_whole_memory():
    m = make()
    f, ids = feats(), tokens()
    memory = m.model.encoder(f)
    base = m.model.decoder(ids, memory)
    for j in range(memory.shape[1]):
        mem = memory.clone()
        mem[:, j] += 0.5
        assert not torch.allclose(m.model.decoder(ids, mem)[:, 0], base[:, 0]), f"frame {j} unseen"


@pytest.mark.parametrize("kw", [{}, dict(cross_attention=False), dict(max_rel_dist=0),
                                dict(position="rope"), dict(position="alibi"), dict(position="learned_sinusoidal"),
                                dict(decoder_mixer={"kind": "local", "window": 3}),
                                dict(encoder_mixer="conv_attention", decoder_mixer="conv_attention"),
                                dict(encoder_mixer="memory", decoder_mixer={"kind": "memory", "projections": True}),
                                dict(encoder_mixer={"kind": "attention", "persistent": 3},
                                     decoder_mixer={"kind": "attention", "persistent": 3})])
def test_cached_decoding_equals_recomputation(kw):
    m = make(**kw)
    f, ids = feats(), tokens(T=11)
    full = m(f, ids).logits
    memory = m.model.encoder(f)
    for chunks in ([1] * 11, [4, 1, 6]):
        cache, outs, t = m.model.init_cache(), [], 0
        for c in chunks:
            outs.append(m.model.decoder(ids[:, t:t + c], memory, cache=cache))
            t += c
        torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-10)


def test_greedy_decode_cached_equals_uncached():
    from archlab.models.echo import greedy_decode

    m = make()
    f = feats()
    start = torch.full((2, 1), V - 1)
    a = greedy_decode(m.model, f, start, max_new_tokens=10, eos_token_id=None, use_cache=True)
    b = greedy_decode(m.model, f, start, max_new_tokens=10, eos_token_id=None, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 11)


def test_every_parameter_gets_a_gradient():
    m = make().train()
    f, ids = feats(), tokens()
    out = m(f, labels=ids)
    out.loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_labels_shift_right_after_the_start_token():
    m = make()
    f, ids = feats(), tokens()
    labels = ids.clone()
    labels[:, -2:] = -100
    out = m(f, labels=labels)
    dec_in = torch.cat([torch.full((2, 1), V - 1), ids[:, :-1]], 1)
    dec_in[:, -1] = V - 2  # an ignored label becomes the pad token on the decoder side
    logits = m(f, dec_in).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-2].reshape(-1, V), ids[:, :-2].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


def test_checkpointing_same_gradients_less_memory():
    def grads(ckpt: bool):
        m = make(checkpointing=ckpt, n_audio_layer=3, n_text_layer=3).train()
        m.model.double()
        out = m(feats(frames=24), labels=tokens())
        out.loss.backward()
        return {n: p.grad for n, p in m.named_parameters()}

    a, b = grads(False), grads(True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # peak memory of the saved activations: checkpointing keeps only block inputs
    from torch.autograd.graph import saved_tensors_hooks

    def saved_bytes(ckpt: bool) -> int:
        m = Echo(tiny(checkpointing=ckpt, n_audio_layer=4, n_text_layer=4, n_audio_ctx=64,
                      n_text_ctx=64)).train()
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            m(torch.randn(2, 16, 128), labels=torch.randint(0, V - 2, (2, 60)))
        return total[0]

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_knobs_change_the_model():
    f, ids = feats(), tokens()
    base = make()(f, ids).logits
    for kw in (dict(max_rel_dist=2), dict(cross_attention=False), dict(base=100.0), dict(position="alibi"),
               dict(norm="rms"), dict(ffn="swiglu"), dict(encoder_mixer="conv_attention")):
        other = make(**kw)
        assert not torch.allclose(other(f, ids).logits, base), kw
    # max_rel_dist sizes the relative bias tables
    m = make(max_rel_dist=7)
    tables = [p for n, p in m.named_parameters() if n.endswith("table")]
    assert tables and all(t.shape[0] in (8, 15) for t in tables)  # causal 0..7, bidirectional −7..7


def test_bad_input_is_one_line():
    m = make()
    with pytest.raises(ValueError, match=r"^input_features must be \(batch, 16 mel bins, frames\)"):
        m(torch.randn(2, 8, 24, dtype=torch.float64), tokens())
    with pytest.raises(ValueError, match=r"more than n_audio_ctx=12 \(at most 24 frames\)$"):
        m(feats(frames=30), tokens())
    with pytest.raises(ValueError, match=r"exceed n_text_ctx=16$"):
        m(feats(), tokens(T=17))
    with pytest.raises(Exception, match=r"n_audio_state: 18 is not divisible by n_audio_head=4"):
        Echo(tiny(n_audio_state=18, n_audio_head=4))
    with pytest.raises(Exception, match="unknown position kind 'rotary'"):
        Echo(tiny(position="rotary"))


def test_full_size_config_builds_and_counts():
    """The seed's full-size shape builds (on the meta device: no memory; plain RoPE there, since the
    Givens pairing is computed from real tensors); its size next to whisper-medium's 769M."""
    with torch.device("meta"):
        big = Echo(EchoConfig(n_mels=80, n_audio_ctx=1500, n_audio_state=1024, n_audio_head=16, n_audio_layer=24,
                              vocab_size=51865, n_text_ctx=448, n_text_state=1024, n_text_head=16, n_text_layer=20,
                              max_rel_dist=15, position="rope"))
    n = sum(p.numel() for p in big.parameters())
    assert 690e6 < n < 700e6  # 24 encoder + 20 decoder layers (whisper-medium: 24 + 24)


def test_position_stack_rotates_and_adds_biases():
    """A stack of RoPE and a relative bias gives softmax((R_i q)·(R_j k)/√d + b[i−j])·v."""
    from archlab.nn.mixers.attention import Attention
    from archlab.nn.positional.relative import ClippedRelativeBias
    from archlab.nn.positional.rope import RotaryEmbedding
    from archlab.nn.positional.stack import PositionStack

    torch.manual_seed(0)
    rope, rel = RotaryEmbedding(head_dim=8), ClippedRelativeBias(heads=2, max_rel_dist=3)
    stack = PositionStack([rope, rel])
    assert stack.uses_rotate and stack.uses_bias and stack.relative_bias and not stack.uses_embed
    attn = Attention(dim=16, heads=2, position=stack).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    pos = torch.arange(7)
    q, k, v = attn.project(x)
    q, k = rope.rotate(q, k, pos, pos)
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5 + rel.bias(q, k, pos, pos)
    scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    ref = attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(attn(x, positions=pos), ref)


def test_cross_attention_with_rope_matches_the_formula():
    """Queries rotate at decoder positions, memory keys at frame positions, computed once."""
    from archlab.nn.mixers.cross_attention import CrossAttention
    from archlab.nn.positional.rope import RotaryEmbedding

    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=8)
    cross = CrossAttention(dim=16, heads=2, position=rope, dim_memory=12).double()
    x, mem = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 9, 12, dtype=torch.float64)
    qp, kp = torch.arange(3, 8), torch.arange(9)
    q = cross.q(x).view(2, 5, 2, 8).transpose(1, 2)
    k, v = cross.memory_kv(mem)
    q, _ = rope.rotate(q, q, qp, qp)
    _, k = rope.rotate(k, k, kp, kp)
    ref = cross.out(((q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(cross(x, positions=qp, memory=mem, memory_positions=kp), ref)
    cache = cross.init_cache()
    first = cross(x[:, :2], positions=qp[:2], memory=mem, memory_positions=kp, cache=cache)
    rest = cross(x[:, 2:], positions=qp[2:], cache=cache)  # memory from the cache
    torch.testing.assert_close(torch.cat([first, rest], 1), ref)
    assert len(cache) == 9


@pytest.mark.parametrize("num_beams", [1, 3])
def test_hf_generate_equals_archlab_decoding(num_beams):
    from archlab.models.echo import greedy_decode

    m = make()
    f = feats()
    out = m.generate(input_features=f, max_new_tokens=8, do_sample=False, num_beams=num_beams,
                     decoder_start_token_id=V - 1, eos_token_id=None, pad_token_id=V - 2)
    if num_beams == 1:
        ours = greedy_decode(m.model, f, torch.full((2, 1), V - 1), max_new_tokens=8, eos_token_id=None)
        assert torch.equal(out, ours)
    else:  # beam search with the cache reordered equals beam search recomputing every step
        ref = m.generate(input_features=f, max_new_tokens=8, do_sample=False, num_beams=num_beams,
                         decoder_start_token_id=V - 1, eos_token_id=None, pad_token_id=V - 2, use_cache=False)
        assert torch.equal(out, ref) and out.shape == (2, 9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Echo trained from nothing on four espeak-ng utterances until its loss is ~0,
    saved with its tokenizer and feature extractor."""
    from archlab.data.speech.features import LogMelFrontEnd
    from archlab.data.speech.manifest import load_manifest
    from archlab.data.speech.synth import generate_corpus
    from archlab.data.speech.text import CharTokenizer
    from archlab.hf import save_echo

    root = tmp_path_factory.mktemp("echo")
    generate_corpus(root / "c", n_train=4, n_valid=0, n_test=0, seed=5)
    utts = load_manifest(root / "c" / "train.jsonl")
    tok = CharTokenizer.from_texts(u.text for u in utts)
    feats_ = LogMelFrontEnd(n_mels=16, n_frames=400)([u.audio for u in utts])  # 4 s each
    T = max(len(u.text) for u in utts) + 1
    labels = torch.full((4, T), -100)
    for i, u in enumerate(utts):
        ids = tok.encode(u.text) + [tok.eot_id]
        labels[i, :len(ids)] = torch.tensor(ids)
    torch.manual_seed(0)
    m = Echo(EchoConfig(n_mels=16, n_audio_ctx=200, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                        vocab_size=tok.vocab_size, n_text_ctx=T + 1, n_text_state=64, n_text_head=4, n_text_layer=2,
                        max_rel_dist=8, bos_token_id=0, eos_token_id=0, pad_token_id=0, decoder_start_token_id=1))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss = m(feats_, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    m.eval()
    save_echo(m, tok, root / "model", n_frames=400)
    return dict(model=m, tok=tok, feats=feats_, utts=utts, T=T, folder=root / "model", loss=loss.item())


def test_tiny_echo_learns_to_transcribe_spoken_utterances(trained):
    """End to end on real speech: espeak-ng utterances -> log-mel -> Echo, trained from nothing
    until greedy decoding gives every transcript exactly."""
    from archlab.models.echo import greedy_decode

    out = greedy_decode(trained["model"].model, trained["feats"], torch.full((4, 1), 1),
                        max_new_tokens=trained["T"], eos_token_id=0)
    assert [trained["tok"].decode(r[1:]) for r in out] == [u.text for u in trained["utts"]], trained["loss"]


def test_pipeline_transcribes_offline(trained):
    from transformers import pipeline

    from archlab.data.speech.audio import load_audio

    asr = pipeline("automatic-speech-recognition", model=str(trained["folder"]))
    for u in trained["utts"][:2]:
        assert asr(load_audio(u.audio))["text"] == u.text
    u = trained["utts"][2]
    assert asr({"raw": load_audio(u.audio), "sampling_rate": 16000})["text"] == u.text
    # the feature extractor itself resamples other rates (the pipeline would need torchaudio for that)
    from transformers import AutoFeatureExtractor

    from archlab.data.speech.audio import resample

    fe = AutoFeatureExtractor.from_pretrained(trained["folder"])
    a16 = load_audio(u.audio)
    f16 = fe(a16, sampling_rate=16000)["input_features"]
    f22 = fe(resample(a16, 16000, 22050), sampling_rate=22050)["input_features"]
    assert f16.shape == f22.shape == (1, 16, 400) and abs(f16 - f22).max() < 0.1


def test_transcribe_command_reports_bad_files_and_transcribes_the_rest(trained, tmp_path, capsys):
    from archlab.cli import main

    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    files = [str(trained["utts"][0].audio), str(bad), str(tmp_path / "missing.flac"), str(trained["utts"][1].audio)]
    code = main(["transcribe", str(trained["folder"]), *files, "--json", "--batch", "1"])
    out, err = capsys.readouterr()
    assert code == 2
    res = json.loads(out)
    assert [r["text"] for r in res["transcripts"]] == [trained["utts"][0].text, trained["utts"][1].text]
    assert len(res["errors"]) == 2 and "notes.wav" in res["errors"][0] and "missing.flac: no such file" in res["errors"][1]
    assert err.count("archlab: error:") == 2
    assert main(["transcribe", str(trained["folder"]), files[0], "--beams", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"{files[0]}\t{trained['utts'][0].text}"
    assert main(["transcribe", str(tmp_path), files[0]]) == 2  # not an Echo folder: one line
    assert "not an Echo folder" in capsys.readouterr().err
    for args, what in ((["--batch", "0"], "--batch: must be ≥ 1, got 0"), (["--beams", "-1"], "--beams: must be ≥ 1"),
                       (["--max-new-tokens", "0"], "--max-new-tokens: must be ≥ 1")):
        assert main(["transcribe", str(trained["folder"]), files[0], *args]) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1
