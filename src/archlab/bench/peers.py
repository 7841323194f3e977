"""Adapters for peer libraries, built at the same shape as an archlab model.

Only x-transformers (lucidrains) for now. It is an optional dependency (the ``peers`` extra);
importing this module never fails, calling an adapter without the library raises a one-line
:class:`PeerNotInstalled`.

How the peer is configured, and why (x-transformers 2.x defaults in brackets):

* ``TransformerWrapper(num_tokens=vocab, attn_layers=Decoder(dim, depth, heads))`` with
  ``attn_dim_head = dim // heads`` [64], so every weight matrix has archlab's shape.
* RoPE: ``rotary_pos_emb=True`` and ``use_abs_pos_emb=False`` [learned absolute table].
  x-transformers rotates only half of each head [``rotary_emb_dim = dim_head // 2``]; this is
  left at its default: it has no parameters and is slightly *cheaper* than full RoPE, so the
  comparison errs in the peer's favour.
* ``tie_embedding=True`` [False]: archlab ties the LM head to the embedding by default; tying
  also gives AdamW fewer parameters to update, again erring in the peer's favour. The tied
  head computes ``(h @ Eᵀ) · dim**-0.5``.
* Norm and MLP are left at the peer's defaults: pre-norm, bias-less LayerNorm with a gain
  (``nn.LayerNorm`` kernel), GELU MLP ×4 *with* biases, a final norm.
* CoPE (``cope`` variant): ``attn_use_cope=True`` with ``attn_cope_max_pos=64``, no rotary
  and no absolute table, i.e. CoPE alone, as archlab's ``position: {kind: cope}``.
* Attention: by default [``attn_flash=False``] x-transformers computes attention explicitly
  (``einsum`` → mask → softmax → ``einsum``, materialising the ``T×T`` scores and keeping a
  copy for its intermediates). ``attn_flash=True`` routes to
  ``F.scaled_dot_product_attention(is_causal=True)``, which on CPU is a fused flash kernel.
  :data:`XT_VARIANTS` names both, so a benchmark can report each and compare against the
  better one.

Generation uses the peer's own ``AutoregressiveWrapper.generate(..., cache_kv=True)``: after
the prompt it feeds only the newest token, keeps per-layer K/V that grow by ``torch.cat``
each step, and runs the full Python path of ``TransformerWrapper.forward`` per token. Greedy
decoding (``temperature=0``) is used so both sides do identical work per token.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PeerNotInstalled",
    "peers_available",
    "xtransformers_lm",
    "xtransformers_loss",
    "xtransformers_generate_fn",
    "xtransformers_head",
    "XT_VARIANTS",
]

_INSTALL_HINT = "peers not installed: pip install 'archlab[peers]'"


class PeerNotInstalled(ImportError):
    """A peer library needed for a comparison is missing (one-line message with the fix)."""


def peers_available() -> bool:
    """True when x-transformers can be imported (without importing it)."""
    return importlib.util.find_spec("x_transformers") is not None


def _xt() -> Any:
    try:
        import x_transformers
    except ImportError as exc:
        raise PeerNotInstalled(_INSTALL_HINT) from exc
    return x_transformers


#: Named x-transformers variants: keyword overrides for :func:`xtransformers_lm`.
#: ``default`` is what a user gets out of the box; ``flash`` switches attention to SDPA.
XT_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "flash": {"attn_flash": True},
    # CoPE alone (x-transformers cannot combine it with flash attention), positions capped at
    # 64 like archlab's ``cope`` default, and no rotary or absolute embedding besides.
    "cope": {"rope": False, "wrapper_use_abs_pos_emb": False, "attn_use_cope": True, "attn_cope_max_pos": 64},
}


def xtransformers_lm(
    *,
    vocab: int,
    dim: int,
    depth: int,
    heads: int,
    seq_len: int,
    rope: bool = True,
    tie_embedding: bool = True,
    max_seq_len: int | None = None,
    **kw: Any,
) -> nn.Module:
    """An x-transformers decoder LM with archlab's shape; ``model(ids) -> logits (B, T, V)``.

    ``seq_len`` is the training context; ``max_seq_len`` (default ``seq_len``) bounds how much
    history cached generation keeps (x-transformers slides its KV cache beyond it), so a
    generation benchmark should pass at least ``prompt_len + new_tokens``. Extra keywords go
    to ``Decoder`` (e.g. ``attn_flash=True``, ``use_rmsnorm=True``, ``ff_glu=True``); keys
    starting with ``wrapper_`` go to ``TransformerWrapper`` with the prefix removed.
    """
    xt = _xt()
    wrapper_kw = {k[len("wrapper_"):]: v for k, v in kw.items() if k.startswith("wrapper_")}
    decoder_kw = {k: v for k, v in kw.items() if not k.startswith("wrapper_")}
    decoder_kw.setdefault("attn_dim_head", dim // heads)
    decoder = xt.Decoder(dim=dim, depth=depth, heads=heads, rotary_pos_emb=rope, **decoder_kw)
    return xt.TransformerWrapper(
        num_tokens=vocab,
        max_seq_len=max(seq_len, max_seq_len or 0),
        # With RoPE there is no absolute table; without RoPE keep x-transformers' learned one
        # so the model still knows positions (unless the caller says otherwise, e.g. for CoPE).
        use_abs_pos_emb=wrapper_kw.pop("use_abs_pos_emb", not rope),
        tie_embedding=tie_embedding,
        attn_layers=decoder,
        **wrapper_kw,
    )


def xtransformers_head(model: nn.Module) -> list[nn.Module]:
    """The LM-head module(s) of an x-transformers model, for ``nonembedding_params(exclude=)``.

    With a tied head ``to_logits`` is a lambda over the embedding (no own parameters), so
    nothing needs excluding.
    """
    head = getattr(model, "to_logits", None)
    return [head] if isinstance(head, nn.Module) else []


def xtransformers_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy for an x-transformers ``TransformerWrapper``.

    Same computation as :func:`archlab.bench.harness.next_token_loss` (logits of
    ``tokens[:, :-1]`` scored on ``tokens[:, 1:]`` via a ``(B·T, V)`` view). It deliberately
    does not go through ``AutoregressiveWrapper.forward``, which would add a ``where`` over the
    inputs and a transpose of the logits, so that the loss is not what is compared.
    """
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def xtransformers_generate_fn(model: nn.Module, **generate_kw: Any) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """A ``generate_fn(prompt, new_tokens)`` for :func:`archlab.bench.harness.bench_generate`.

    Wraps ``model`` in ``AutoregressiveWrapper`` and calls its ``generate`` with
    ``cache_kv=True`` and greedy decoding unless overridden in ``generate_kw``. Returns only
    the new tokens (``1 × new_tokens``).
    """
    xt = _xt()
    wrapper = xt.AutoregressiveWrapper(model)
    kw = {"temperature": 0.0, "cache_kv": True, **generate_kw}

    def generate(prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        model.eval()
        return wrapper.generate(prompt, new_tokens, **kw)

    return generate
