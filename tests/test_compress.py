"""Lossless checkpoint compression (archlab.codec, archlab compress / decompress): exact round
trips for every dtype a checkpoint holds, damage reported by tensor, and runs that load,
evaluate and resume from a compressed checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from archlab.cli import main
from archlab.codec import CodecError, encode_tensor, read_compressed, write_compressed
from archlab.train.checkpoint import (
    CHECKPOINT,
    COMPRESSED,
    CheckpointError,
    compress_checkpoint,
    decompress_checkpoint,
    read_checkpoint,
    safetensors_items,
    save_checkpoint,
)

RUN = ["--set", "model.dim=32", "--set", "model.depth=2", "--set", "model.heads=4", "--set", "train.seq_len=32",
       "--set", "train.batch=4", "--set", "train.eval_every=1000", "--set", "train.eval_tokens=512",
       "--set", "model.max_seq_len=64", "--set", "train.ckpt_every=4"]


def _special(dtype):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1000, generator=g).mul(0.02).to(dtype)
    extra = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-45, 65504.0]).to(dtype)
    return torch.cat([t, extra])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_round_trip_is_bit_exact_for_floats(dtype, tmp_path):
    t = _special(dtype)
    raw = t.view(torch.uint8).numpy().tobytes()
    name = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}[dtype]
    write_compressed(tmp_path / "x.archz", [("w", name, [t.numel()], raw)], {"k": "v"})
    items, meta = read_compressed(tmp_path / "x.archz")
    assert meta == {"k": "v"} and items == [("w", name, [t.numel()], raw)]


def test_the_exponent_plane_of_bf16_compresses_and_the_mantissa_is_kept_raw():
    t = torch.randn(100_000, generator=torch.Generator().manual_seed(0)).mul(0.02).bfloat16()
    planes = encode_tensor(t.view(torch.uint8).numpy().tobytes(), "BF16")
    (low_kind, low), (high_kind, high) = planes  # little-endian: byte 0 low, byte 1 the exponent
    assert high_kind == "zstd" and len(high) < 0.4 * 100_000
    import zstandard

    plain = zstandard.ZstdCompressor(level=3).compress(t.view(torch.uint8).numpy().tobytes())
    assert len(low) + len(high) < len(plain)  # byte planes beat zstd on the interleaved bytes


def test_checkpoint_round_trip_with_optimiser_state(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)).to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 8, dtype=torch.bfloat16)).float().sum().backward()
    opt.step()
    src = save_checkpoint(tmp_path / CHECKPOINT, model=model, optimizer=opt, state={"step": 1})
    compress_checkpoint(src, tmp_path / COMPRESSED)
    a, ma = read_checkpoint(src)
    b, mb = read_checkpoint(tmp_path / COMPRESSED)
    assert ma == mb and a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    back = decompress_checkpoint(tmp_path / COMPRESSED, tmp_path / "back.safetensors")
    ia, meta_a = safetensors_items(src)
    ib, meta_b = safetensors_items(back)
    assert sorted(ia) == sorted(ib) and meta_a == meta_b


def _damage(path, at, value=None):
    data = bytearray(path.read_bytes())
    if value is None:
        path.write_bytes(bytes(data[:at]))
    else:
        data[at] ^= value
        path.write_bytes(bytes(data))


def test_damage_is_one_line_naming_the_file_and_tensor(tmp_path):
    model = torch.nn.Linear(64, 64)
    src = save_checkpoint(tmp_path / CHECKPOINT, model=model)
    packed = tmp_path / COMPRESSED
    compress_checkpoint(src, packed)
    good = packed.read_bytes()
    _damage(packed, len(good) - 10, 0x40)  # a byte of the last tensor's planes
    with pytest.raises(CheckpointError, match=f"{packed}: tensor '[^']+' (fails its checksum|cannot be decomp)"):
        read_checkpoint(packed)
    packed.write_bytes(good)
    _damage(packed, len(good) - 100)  # truncated
    with pytest.raises(CheckpointError, match="tensor '[^']+' cannot be decompressed .*truncated"):
        read_checkpoint(packed)
    packed.write_bytes(good[:20])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(packed)
    with pytest.raises(CodecError, match="dtype C64 is not supported"):
        write_compressed(tmp_path / "y", [("z", "C64", [1], b"12345678")], {})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "lm"
    assert main(["train", "configs/lm.yaml", "--out", str(out), "--no-progress", *RUN,
                 "--set", "train.steps=8"]) == 0
    return out


def test_a_compressed_run_evaluates_and_resumes_like_the_original(run_dir, tmp_path, capsys):
    import shutil

    plain, packed = tmp_path / "plain", tmp_path / "packed"
    shutil.copytree(run_dir, plain)
    shutil.copytree(run_dir, packed)
    assert main(["compress", str(packed)]) == 0
    (packed / CHECKPOINT).unlink()  # only the compressed checkpoint is left
    capsys.readouterr()
    for d in (plain, packed):
        assert main(["eval", str(d), "--max-tokens", "512", "--json"]) == 0
    a, b = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert a == b
    for d in (plain, packed):
        assert main(["train", "configs/lm.yaml", "--out", str(d), "--no-progress", "--resume", *RUN,
                     "--set", "train.steps=12"]) == 0
    ta, _ = read_checkpoint(plain / CHECKPOINT)
    tb, _ = read_checkpoint(packed / CHECKPOINT)
    assert all(torch.equal(ta[k], tb[k]) for k in ta if not k.startswith("rng"))


def test_cli_refusals(run_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(run_dir, d)
    assert main(["compress", str(d)]) == 0
    capsys.readouterr()
    assert main(["compress", str(d / COMPRESSED)]) == 2
    assert "compressed already" in capsys.readouterr().err
    assert main(["decompress", str(d)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["decompress", str(d), "--force"]) == 0
    assert main(["decompress", str(d / CHECKPOINT)]) == 2
    assert "not an archlab compressed checkpoint" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "none")]) == 2
    assert main(["compress", str(d), "--out", str(d / CHECKPOINT)]) == 2


def test_int_and_empty_tensors(tmp_path):
    items = [("a", "I64", [3], np.array([1, -2, 2**40], dtype=np.int64).tobytes()),
             ("b", "U8", [4], bytes([0, 255, 7, 7])), ("c", "F32", [0], b""), ("d", "BOOL", [2], bytes([1, 0]))]
    write_compressed(tmp_path / "x", items, {})
    assert read_compressed(tmp_path / "x")[0] == items


def test_export_and_bench_read_a_compressed_run(run_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(run_dir, d)
    assert main(["compress", str(d)]) == 0
    (d / CHECKPOINT).unlink()
    assert main(["export", str(d), "--hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    out = tmp_path / "b.json"
    assert main(["bench", "compress", "--run", str(d), "--rounds", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    bf16 = res["inputs"]["trained bf16"]
    assert bf16["archlab"]["ratio"] < bf16["zstd"]["ratio"] < 1.0
    assert ("zipnn" in bf16) == ("archlab_ratio_over_zipnn" in bf16)


def test_zipnn_codec_round_trip_when_installed(tmp_path):
    pytest.importorskip("zipnn")
    model = torch.nn.Linear(64, 64)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        src = save_checkpoint(tmp_path / f"{dtype}.safetensors", model=model.to(dtype))
        compress_checkpoint(src, tmp_path / "z.archz", codec="zipnn")
        a, _ = read_checkpoint(src)
        b, _ = read_checkpoint(tmp_path / "z.archz")
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(model.weight.detach(), a["model.weight"])  # zipnn did not change its input
