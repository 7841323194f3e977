"""Compressors of the hierarchical family by kind (``family_options.compressor``): how a coarse
stream summarises a window of fine positions (nn/compress.py)."""

from __future__ import annotations

from archlab.nn.compress import AttnPoolCompressor, ConvCompressor, VQCompressor
from archlab.registry import COMPRESSOR, PartConfig


@COMPRESSOR.register("conv", PartConfig, "causal depthwise-separable convolution over the window")
def _conv(cfg: PartConfig, *, dim_in: int, dim_out: int, factor: int, stride: int, **_: object):
    return ConvCompressor(dim_in=dim_in, dim_out=dim_out, factor=factor, stride=stride)


@COMPRESSOR.register("attn", PartConfig, "attention pooling: a learned query per head over the window")
def _attn(cfg: PartConfig, *, dim_in: int, dim_out: int, factor: int, stride: int, heads: int, **_: object):
    return AttnPoolCompressor(dim_in=dim_in, dim_out=dim_out, factor=factor, stride=stride, heads=heads)


@COMPRESSOR.register("vq", PartConfig, "a fixed random projection quantised to a learned codebook (BEST-RQ)")
def _vq(cfg: PartConfig, *, dim_in: int, dim_out: int, factor: int, stride: int, vq_codes: int, vq_dim: int,
        vq_beta: float, seed: int, **_: object):
    return VQCompressor(dim_in=dim_in, dim_out=dim_out, factor=factor, stride=stride, codes=vq_codes,
                        code_dim=vq_dim, beta=vq_beta, seed=seed)
