"""Lossless compression of tensors by byte planes (ZipNN's idea: Hershcovitch et al. 2024,
arXiv 2411.05239), with ``zstandard``; numpy only, no torch.

A float's exponent is highly skewed (weights cluster in a few binades) while its mantissa is
close to random. Bytes mix the two, so a general-purpose compressor sees noise. The codec:

1. for a float dtype, rotates each element's bits left by one (the sign moves to the lowest
   bit), so the exponent fills the top byte exactly (bf16, fp32; for fp16 the top byte is the
   5 exponent bits and 3 mantissa bits);
2. splits the elements' bytes into planes (byte 0 of every element, byte 1, ...);
3. compresses each plane with zstandard on its own, and stores a plane raw when that does not
   make it smaller (the low mantissa bytes). A float's planes are coded with match finding
   all but off (minimum match 7, a 64-entry hash): what is left is zstd's Huffman coding of
   literals, which is what a skewed, matchless exponent byte needs (0.326 of its size for
   bf16 weights of an init, where level 3's matches give 0.406); integer tensors use level 3.

The file (``.archz``): ``MAGIC``, an 8-byte little-endian header length, a JSON header
(codec, the container's metadata, and per tensor its dtype, shape, SHA-256 of the raw bytes
and its planes' offsets and lengths), then the planes. Decoding checks every tensor's digest,
so a damaged or truncated file is an error naming the file and the tensor, never a wrong
tensor. ``codec: zipnn`` stores each tensor as the ``zipnn`` package compresses it (optional).
"""

from __future__ import annotations

import hashlib
import json
import struct
from functools import lru_cache
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"ARCHLABZ\x00\x01"
CODECS = ("byteplane", "zipnn")
# dtype name (as safetensors writes it) -> (item size, whether it is a float whose bits rotate)
DTYPES = {"F64": (8, True), "F32": (4, True), "F16": (2, True), "BF16": (2, True), "I64": (8, False),
          "I32": (4, False), "I16": (2, False), "I8": (1, False), "U8": (1, False), "BOOL": (1, False)}
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class CodecError(ValueError):
    """A compressed file that cannot be read back exactly (one line: the file and the tensor)."""


def _rotate(raw: bytes, size: int, left: bool) -> np.ndarray:
    x = np.frombuffer(raw, dtype=_UINT[size]).astype(_UINT[size])
    bits = np.array(8 * size - 1, dtype=_UINT[size])
    one = np.array(1, dtype=_UINT[size])
    return (x << one) | (x >> bits) if left else (x >> one) | (x << bits)


def entropy_coder() -> Any:
    """zstd with match finding all but off: Huffman-coded literals (see the module doc)."""
    import zstandard

    params = zstandard.ZstdCompressionParameters(window_log=17, chain_log=6, hash_log=6, search_log=1,
                                                 min_match=7, target_length=0, strategy=zstandard.STRATEGY_FAST)
    return zstandard.ZstdCompressor(compression_params=params)


def encode_tensor(raw: bytes, dtype: str, *, level: int = 3, zstd: Any = None, entropy: Any = None
                  ) -> list[tuple[str, bytes]]:
    """The planes of one tensor's bytes, each ("zstd" | "raw", bytes)."""
    import zstandard

    size, is_float = DTYPES[dtype]
    if size > 1:
        words = _rotate(raw, size, left=True) if is_float else np.frombuffer(raw, dtype=_UINT[size])
        planes = words.view(np.uint8).reshape(-1, size).T  # (size, n): byte j of every element
    else:
        planes = np.frombuffer(raw, dtype=np.uint8)[None]
    z = (entropy or entropy_coder()) if is_float else (zstd or zstandard.ZstdCompressor(level=level))
    out = []
    for p in planes:
        b = np.ascontiguousarray(p).tobytes()
        c = z.compress(b)
        out.append(("zstd", c) if len(c) < len(b) else ("raw", b))
    return out


def decode_tensor(planes: list[tuple[str, bytes]], dtype: str, n_items: int, *, zstd: Any = None) -> bytes:
    import zstandard

    size, is_float = DTYPES[dtype]
    d = zstd or zstandard.ZstdDecompressor()
    arrays = []
    for kind, b in planes:
        plain = d.decompress(b, max_output_size=n_items) if kind == "zstd" else b
        if len(plain) != n_items:
            raise ValueError(f"a byte plane holds {len(plain)} bytes, expected {n_items}")
        arrays.append(np.frombuffer(plain, dtype=np.uint8))
    if size == 1:
        return arrays[0].tobytes()
    words = np.stack(arrays, 1).reshape(-1).view(_UINT[size])
    return (_rotate(words.tobytes(), size, left=False) if is_float else words).tobytes()


@lru_cache(maxsize=None)
def _zipnn(dtype: str) -> Any:
    """One zipnn coder per float dtype (None for the others), built once."""
    try:
        from zipnn import ZipNN
    except ImportError as e:
        raise CodecError(f"codec zipnn: the zipnn package is not installed ({e}); pip install zipnn, "
                         "or use codec byteplane") from None
    fmt = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(dtype)
    return ZipNN(input_format="byte", bytearray_dtype=fmt) if fmt else None


def write_compressed(path: str | Path, tensors: Iterable[tuple[str, str, list[int], bytes]],
                     metadata: dict[str, str] | None, *, codec: str = "byteplane", level: int = 3) -> dict[str, int]:
    """Write ``(name, dtype, shape, raw bytes)`` tensors and a string metadata mapping to ``path``
    (not atomically: callers write a temp file and rename). Returns raw and compressed sizes."""
    import zstandard

    if codec not in CODECS:
        raise CodecError(f"codec: '{codec}'; allowed: {', '.join(CODECS)}")
    z, entropy = zstandard.ZstdCompressor(level=level), entropy_coder()
    entries, blobs, offset, raw_total = [], [], 0, 0
    for name, dtype, shape, raw in tensors:
        if dtype not in DTYPES:
            raise CodecError(f"tensor '{name}': dtype {dtype} is not supported; allowed: {', '.join(DTYPES)}")
        zn = _zipnn(dtype) if codec == "zipnn" else None
        # zipnn rotates the bits of its input in place (0.5.x), so it gets a copy
        planes = [("zipnn", bytes(zn.compress(bytearray(raw))))] if zn is not None else \
            encode_tensor(raw, dtype, zstd=z, entropy=entropy)
        entry = {"name": name, "dtype": dtype, "shape": list(shape), "sha256": hashlib.sha256(raw).hexdigest(),
                 "bytes": len(raw), "planes": []}
        for kind, b in planes:
            entry["planes"].append([kind, offset, len(b)])
            blobs.append(b)
            offset += len(b)
        entries.append(entry)
        raw_total += len(raw)
    header = json.dumps({"codec": codec, "metadata": metadata or {}, "tensors": entries}).encode()
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for b in blobs:
            f.write(b)
    return {"raw_bytes": raw_total, "compressed_bytes": len(MAGIC) + 8 + len(header) + offset}


def is_compressed(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_compressed(path: str | Path) -> tuple[list[tuple[str, str, list[int], bytes]], dict[str, str]]:
    """``(name, dtype, shape, raw bytes)`` per tensor and the metadata, each tensor checked
    against its digest; :class:`CodecError` (one line: the file, the tensor) otherwise."""
    import zstandard

    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CodecError(f"{path}: not an archlab compressed file")
    try:
        (n,) = struct.unpack_from("<Q", data, len(MAGIC))
        start = len(MAGIC) + 8
        if start + n > len(data):
            raise ValueError("the header runs past the end of the file")
        header = json.loads(data[start:start + n])
        entries, codec, metadata = header["tensors"], header["codec"], header["metadata"]
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise CodecError(f"{path}: compressed file is truncated or corrupt ({str(e).splitlines()[0][:80]})") from None
    body = memoryview(data)[start + n:]
    d = zstandard.ZstdDecompressor()
    out = []
    for e in entries:
        name = e.get("name", "?")
        try:
            planes = []
            for kind, off, length in e["planes"]:
                if off + length > len(body):
                    raise ValueError("the file ends before this tensor's bytes (truncated)")
                planes.append((kind, bytes(body[off:off + length])))
            if codec == "zipnn":
                zn = _zipnn(e["dtype"])
                raw = bytes(zn.decompress(planes[0][1])) if zn is not None else \
                    decode_tensor(planes, e["dtype"], e["bytes"] // DTYPES[e["dtype"]][0], zstd=d)
            else:
                raw = decode_tensor(planes, e["dtype"], e["bytes"] // DTYPES[e["dtype"]][0], zstd=d)
        except CodecError:
            raise
        except (ValueError, KeyError, TypeError, zstandard.ZstdError) as err:
            raise CodecError(f"{path}: tensor '{name}' cannot be decompressed ({str(err).splitlines()[0][:80]})") \
                from None
        if len(raw) != e["bytes"] or hashlib.sha256(raw).hexdigest() != e["sha256"]:
            raise CodecError(f"{path}: tensor '{name}' fails its checksum after decompression (the file is corrupt)")
        out.append((name, e["dtype"], e["shape"], raw))
    return out, metadata


__all__ = ["CODECS", "CodecError", "MAGIC", "decode_tensor", "encode_tensor", "entropy_coder", "is_compressed",
           "read_compressed",
           "write_compressed"]
