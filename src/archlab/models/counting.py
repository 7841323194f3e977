"""Counting a model: its parameters and its training FLOPs per token.

Below both the lab (``archlab info``) and the benchmarks (MFU), so that a parameter count or a
FLOP figure means the same thing wherever it is printed.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def count_parameters(model: nn.Module, *, exclude_embeddings: bool = False) -> int:
    """Distinct parameters of ``model`` (tied tensors once); ``exclude_embeddings`` drops the
    input table (``model.token_embedding`` where a model names it, else ``model.embed``; and so
    a head tied to it)."""
    table = getattr(model, "token_embedding", None) or getattr(model, "embed", None)
    skip = {id(table.weight)} if exclude_embeddings and table is not None else set()
    return _count(model, skip)


def _count(model: nn.Module, skip: set[int]) -> int:
    # parameters() yields a tensor shared by several modules only once, so tied weights are
    # not double counted.
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def train_flops_per_token(
    n_params_nonembedding: int,
    depth: int,
    dim: int,
    seq_len: int,
    vocab: int,
    *,
    attn_dim: int | None = None,
    causal_discount: bool = False,
) -> float:
    """Training FLOPs per token, the standard dense-transformer estimate.

    ``flops/token = 6 · (N + V·d) + 12 · L · T · d_attn``

    * ``N`` = ``n_params_nonembedding``: parameters of the transformer blocks (attention and
      MLP weights; norm gains and biases are included but negligible). It excludes the input
      embedding table *and* the LM head: a lookup has no matmul FLOPs, and the head is counted
      separately as ``V·d`` so that tied and untied models are charged the same.
    * ``6`` = 2 FLOPs per multiply-accumulate × (1 forward + 2 backward) matmuls per weight.
    * ``V·d``: the LM head matmul, which is real work (a quarter of a layer at the reference
      shape) whether or not its weight is tied to the embedding.
    * ``12 · L · T · d_attn``: attention scores ``QKᵀ`` and the weighted sum ``AV``, each
      ``2·T·d_attn`` FLOPs per token in the forward pass, ×3 for training. Following PaLM
      (Chowdhery et al. 2022, appendix B) the causal mask is *not* discounted by default
      (``causal_discount=True`` halves the term, for kernels that skip masked blocks).

    Everything else (norms, softmax, RoPE, activations, the optimizer) is treated as
    overhead: it costs time but is not "useful" FLOPs, which is what MFU is meant to expose.
    """
    d_attn = dim if attn_dim is None else attn_dim
    dense = 6.0 * (n_params_nonembedding + vocab * dim)
    attention = 12.0 * depth * seq_len * d_attn
    if causal_discount:
        attention /= 2.0
    return dense + attention


def nonembedding_params(model: nn.Module, exclude: Iterable[nn.Module] = ()) -> int:
    """Parameters of ``model`` that are not embedding tables nor in ``exclude``.

    Every ``nn.Embedding`` is dropped (a lookup is not a matmul); pass the LM head in
    ``exclude`` since :func:`train_flops_per_token` charges it separately as ``V·d``.
    Shared (tied) parameters are counted once, and a weight tied to an embedding is dropped
    with the embedding.
    """
    skip: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            skip.update(id(p) for p in mod.parameters())
    for mod in exclude:
        skip.update(id(p) for p in mod.parameters())
    return _count(model, skip)
