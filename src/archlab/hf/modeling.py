"""``ArchlabForCausalLM``: an archlab :class:`~archlab.models.lm.LM` as a ``transformers`` model.

The wrapper adds no computation: ``forward`` translates HF arguments into archlab's
(``position_ids`` -> ``positions``, 2-D ``attention_mask`` -> key ``mask``, ``labels`` ->
shifted ``targets``) and calls the wrapped LM, which stays an ordinary archlab module under
``self.model`` (state-dict keys ``model.<archlab key>``).

Generation runs on transformers' *public* contract only: the stock
``prepare_inputs_for_generation`` (it slices the new tokens, slices ``position_ids``, forwards
the 2-D mask), a ``forward(input_ids, attention_mask, position_ids, cache, use_cache, ...)``
that returns its cache in the output, a default ``generation_config`` and, for archlab's exact
sampling rule, a ``LogitsProcessor`` the caller passes. The cache argument is ``cache``
(transformers >= 5.24); ``past_key_values`` (its name up to 5.23) is accepted as an alias, and
the output field is whichever of the two the installed ``CausalLMOutputWithPast`` declares.

Caching. archlab keeps per-layer decoding state in its own objects (``KVCache`` for attention,
whatever another mixer's ``init_cache`` returns), which HF's ``DynamicCache`` cannot hold.
:class:`~archlab.hf.cache.ArchlabCache` is a ``transformers.Cache`` subclass wrapping archlab's ``ModelCache``;
``generate`` lets the first forward create one and threads it through from then on (beam
search reorders it through ``reorder_cache``). It cannot be rolled back (``crop``), so the
model is marked stateful: assisted/speculative decoding is refused up front by transformers.
A cache from :meth:`ArchlabForCausalLM.new_cache` passed to ``generate`` continues from it.

Default decoding. ``model.generation_config`` is ``do_sample=True, top_k=0``: archlab's own
default (sampling at temperature 1, no top-k, no top-p) instead of transformers' global
default ``top_k=50``. ``top_k=0`` alone (greedy by default) is refused by transformers'
save-time validation, as top_k only applies when sampling; pass ``do_sample=False`` for greedy.

Generation parity with :func:`archlab.models.generate` (tested in ``tests/test_hf.py``, CPU):

* ``do_sample=False`` gives the tokens of ``generate(..., temperature=0)``, cache on both sides
  or off on both sides (the forwards are then the same calls on the same tensors; a cached run
  against an uncached one may differ in the last float bits, hence in near-ties).
* Sampling, after ``torch.manual_seed(s)``, gives the tokens of ``generate(...,
  generator=torch.Generator().manual_seed(s))`` with the same knobs, when the knobs are given
  as ``do_sample=True, logits_processor=LogitsProcessorList([ArchlabLogitsWarper(temperature=T,
  top_k=K, top_p=P)])`` (nothing else; generate's own temperature/top_k/top_p left unset).
  ``do_sample=True, temperature=T, top_k=K`` (no top_p) is exact too: transformers' temperature
  and top-k are the same operations on the same float32 logits. Why exact: transformers samples
  with ``torch.multinomial(softmax(.), 1)`` from the default CPU generator, whose stream after
  ``manual_seed(s)`` equals a fresh generator seeded with ``s``, and nothing else draws from it.
  Why top-p needs the processor: transformers removes a token when its *ascending* cumulative
  mass is ≤ 1 − P, archlab when the mass ranked above it is ≥ P. Same set in exact arithmetic,
  but the two float sums round differently at the boundary (measured: 4 rows in 409,600 random
  256-way logit rows; tests/test_hf.py builds such a row). And the processor must carry the
  temperature and top-k as well: transformers runs a caller's processors *before* its own
  temperature/top-k/top-p warpers, so a top-p-only processor would filter unscaled logits.
  Not covered: a model left in ``train()`` mode with dropout draws from the RNG (archlab's
  ``generate`` switches to eval, HF's does not: call ``.eval()``, as ``from_pretrained`` does);
  on CUDA transformers draws from the CUDA default generator, not a CPU ``torch.Generator``.
* Left-padded batches: HF builds ``position_ids`` from the attention mask (cumsum − 1), and
  the 2-D mask becomes archlab's key mask, so each row sees the positions and keys it would
  see alone; greedy tokens equal per-row unpadded generation up to float ties.

Private transformers hooks still used, each because no public API does the job:

* ``_supports_default_dynamic_cache`` (False): transformers' only switch for "the model makes
  its own cache"; otherwise ``generate`` builds a ``DynamicCache`` (or a static/quantized one
  from ``cache_implementation``) that cannot hold archlab's state.
* ``get_init_context``: ``from_pretrained`` builds models on the meta device; archlab's
  constructors compute real constant buffers (ALiBi slopes, sinusoid tables), so the meta
  device context is dropped.
* ``_init_weights``: the documented per-module initialiser of ``PreTrainedModel``; here it
  restores those constant buffers after loading and gives missing parameters archlab's init.
* ``_tied_weights_keys``, ``_no_split_modules``, ``_is_stateful``: the class attributes by
  which transformers learns of shared parameters, of the unit ``device_map`` must not split,
  and of a cache that cannot be cropped (refuses assisted decoding).
"""

from __future__ import annotations

import re

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.generation.logits_process import LogitsProcessor
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from archlab.hf.cache import ArchlabCache
from archlab.hf.configuration import ArchlabConfig
from archlab.models import build_model
from archlab.models.generation import filter_logits
from archlab.models.lm import IGNORE_INDEX, ModelCache, init_embedding, matrix_std

# The cache's name in transformers' forward/output contract: "cache" from 5.24 on,
# "past_key_values" before. The installed output class says which one generate reads back.
CACHE_ARG = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class ArchlabLogitsWarper(LogitsProcessor):
    """archlab's sampling filter as one transformers processor: temperature, then top-k, then
    nucleus filtering with archlab's boundary rule (:func:`archlab.models.generation.filter_logits`),
    exactly what :func:`archlab.models.generate` does to the logits before it samples.

    Pass it as ``generate(..., do_sample=True, logits_processor=LogitsProcessorList([...]))``
    and leave generate's own ``temperature``/``top_k``/``top_p`` unset: transformers applies a
    caller's processors before its own warpers, so both would filter (see the module docstring).
    """

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be > 0 (greedy is do_sample=False), got {temperature!r}")
        if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
            raise ValueError(f"top_k must be an int >= 0 or None (0 and None: off), got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] or None (1 and None: off), got {top_p!r}")
        self.temperature = float(temperature)
        self.top_k = top_k
        self.top_p = None if top_p is None else float(top_p)

    def __repr__(self) -> str:
        return f"ArchlabLogitsWarper(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p})"

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # the same expression as archlab.models.generation.next_token (float32 logits / T)
        return filter_logits(scores.float() / self.temperature, top_k=self.top_k, top_p=self.top_p)


def _shared_parameter_aliases(root: nn.Module, prefix: str) -> dict[str, str]:
    """{alias name: first name} for every parameter reachable under more than one name.

    archlab shares parameters structurally: the LM head is the embedding when
    ``tie_embeddings``, and layers without their own ``position`` share the model's scheme
    module (one learned/T5 table registered under the model and under every attention).
    """
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in root.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[prefix + name] = first[id(p)]
        else:
            first[id(p)] = prefix + name
    return out


def _shared_buffer_aliases(root: nn.Module, prefix: str) -> list[str]:
    """State-dict names of persistent buffers already reachable under an earlier name (a
    shared scheme module's constant tables, e.g. a Givens scheme's ``pairs``)."""
    persistent = set(root.state_dict(keep_vars=True))
    seen: set[int] = set()
    out = []
    for name, b in root.named_buffers(remove_duplicate=False):
        if name not in persistent:
            continue
        if id(b) in seen:
            out.append(prefix + name)
        seen.add(id(b))
    return out


_SNAPSHOT_ATTR = "_archlab_hf_buffer_snapshot"


def _snapshot_non_persistent_buffers(root: nn.Module) -> None:
    """Keep a copy of every buffer outside the state dict on its own module (an attribute,
    so it follows the module through deepcopy/pickle)."""
    for mod in root.modules():
        names = [n for n in mod._non_persistent_buffers_set if mod._buffers.get(n) is not None]
        if names:
            object.__setattr__(mod, _SNAPSHOT_ATTR, {n: mod._buffers[n].detach().clone() for n in names})


class ArchlabForCausalLM(PreTrainedModel, GenerationMixin):
    """Causal LM head model over an archlab ``LM``; see the module docstring."""

    config_class = ArchlabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    # Parameters shared under several names ({alias: source}): saved once, re-tied on load.
    # The class value is the common case (tied embeddings); each instance replaces it with
    # the sharing its archlab model really has (see _shared_parameter_aliases).
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}
    _no_split_modules = ["Block"]
    # The cache cannot be rolled back: makes transformers refuse assisted decoding clearly.
    _is_stateful = True
    supports_gradient_checkpointing = False
    # The loss is archlab's mean over counted targets; forward takes no num_items_in_batch
    # (it refuses unknown keywords), so transformers' Trainer must not pass one.
    accepts_loss_kwargs = False

    def __init__(self, config: ArchlabConfig, *, lm: nn.Module | None = None) -> None:
        super().__init__(config)
        self.model = lm if lm is not None else build_model(config.archlab_model_config())
        # archlab's default decoding (see the module docstring); from_pretrained replaces it
        # with the folder's generation_config.json, which save_pretrained wrote from this.
        self.generation_config.do_sample = True
        self.generation_config.top_k = 0
        # archlab modules compute constant tables (e.g. ALiBi slopes, the sinusoid table)
        # in their constructors as non-persistent buffers. transformers refills such buffers
        # with uninitialised memory after loading a checkpoint and expects _init_weights to
        # recompute them; a copy taken here is how we recompute them without knowing each
        # scheme (the model is built for real, not on the meta device: get_init_context).
        _snapshot_non_persistent_buffers(self.model)
        self._tied_weights_keys = _shared_parameter_aliases(self.model, f"{self.base_model_prefix}.")
        # transformers re-ties shared parameters only: a shared buffer is saved once, under its
        # first name (save_pretrained below), and its other names are the same tensor once the
        # shared module is loaded, so their absence is expected
        self._shared_buffers = _shared_buffer_aliases(self.model, f"{self.base_model_prefix}.")
        self._keys_to_ignore_on_load_missing = [f"^{re.escape(k)}$" for k in self._shared_buffers] or None
        # post_init ties weights and runs _init_weights over every module; the archlab
        # constructor has already initialised everything its own way, so that pass must
        # change nothing (a fresh wrapper then holds exactly build_model(cfg)'s weights).
        self._archlab_constructing = True
        try:
            self.post_init()
        finally:
            self._archlab_constructing = False
        # post_init marked every module initialised; clear the marks so that after a
        # from_pretrained load transformers calls _init_weights for the modules whose buffers
        # it refilled or whose parameters the checkpoint lacked.
        for mod in self.modules():
            mod.__dict__.pop("_is_hf_initialized", None)

    @classmethod
    def from_archlab(cls, lm: nn.Module, **config_kwargs: Any) -> "ArchlabForCausalLM":
        """Wrap an existing archlab ``LM`` (shares its parameters; nothing is copied). The
        wrapper takes the LM's train/eval mode (it decides the ``use_cache`` default)."""
        model = cls(ArchlabConfig.from_archlab(lm.cfg, **config_kwargs), lm=lm)
        return model.train(lm.training)

    def save_pretrained(self, save_directory: Any, *args: Any, state_dict: dict | None = None,
                        **kwargs: Any) -> Any:
        """transformers' save_pretrained, with each shared persistent buffer saved once."""
        if state_dict is None and self._shared_buffers:
            state_dict = {k: v for k, v in self.state_dict().items() if k not in set(self._shared_buffers)}
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    # ------------------------------------------------------------------ transformers hooks

    @classmethod
    def get_init_context(cls, *args: Any, **kwargs: Any) -> list:
        """transformers builds models on the meta device before loading; archlab constructors
        compute real constant buffers, so build on the real device (see __init__)."""
        contexts = super().get_init_context(*args, **kwargs)
        return [c for c in contexts if not (isinstance(c, torch.device) and c.type == "meta")]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the first forward creates an ArchlabCache instead of a DynamicCache

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Restore refilled constant buffers; initialise parameters a checkpoint did not supply
        the way archlab does (``archlab.models.lm.init_weights``). A no-op while constructing."""
        if getattr(self, "_archlab_constructing", False):
            return
        for name, value in getattr(module, _SNAPSHOT_ATTR, {}).items():
            buf = module._buffers.get(name)
            if buf is not None:
                buf.copy_(value)
        for name, p in module.named_parameters(recurse=False):
            if getattr(p, "_is_hf_initialized", False):
                continue
            self._init_parameter(module, name, p)

    def _init_parameter(self, module: nn.Module, name: str, p: torch.Tensor) -> None:
        cfg = self.model.cfg
        std, rule = cfg.init_std, getattr(cfg, "init", "fixed")
        if isinstance(module, nn.Linear) and name == "weight":
            # the rule of archlab.models.lm.init_weights (residual outputs scaled by 1/√(2·depth))
            nn.init.normal_(p, std=matrix_std(module.in_features, rule=rule, std=std, depth=cfg.depth,
                                              residual_out=getattr(module, "residual_out", False)))
        elif isinstance(module, nn.Embedding):
            init_embedding(p, std, rule)
        elif name == "bias":
            nn.init.zeros_(p)
        elif name == "weight" and p.dim() == 1:  # norm gains
            nn.init.ones_(p)
        else:
            raise ValueError(
                f"archlab: no initialiser for parameter '{name}' of {type(module).__name__}; "
                "the checkpoint must contain it"
            )

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.model.head

    def new_cache(self) -> ArchlabCache:
        """An empty cache for this model: pass it as ``cache`` (``past_key_values`` before
        transformers 5.24) to ``forward`` or ``generate`` to reuse it across calls."""
        return ArchlabCache(self.model.init_cache(), factory=self.model.init_cache)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ArchlabCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids (B, T) -> logits (B, T, V), and the cache when ``use_cache``.

        ``attention_mask`` (B, past + T): 1 for real tokens, 0 for padding, covering cached
        and new tokens. ``position_ids`` (B, T) or (1, T): default from the mask
        (cumsum − 1, as transformers does) or ``past .. past+T−1``. ``labels`` (B, T): HF
        convention, shifted here (token t predicts labels[t+1]); −100 is ignored; ``loss`` is
        the mean over counted targets (archlab's training loss, incl. any auxiliary terms).
        ``cache``: an :class:`ArchlabCache` to continue from (``past_key_values`` is accepted
        as its deprecated name). Any other keyword is refused rather than ignored: the
        attention kwargs of transformers' own models (packed sequences etc.) do not apply.
        """
        cache = self._cache_argument(cache, kwargs)
        if inputs_embeds is not None:
            raise NotImplementedError("ArchlabForCausalLM takes input_ids, not inputs_embeds")
        if output_attentions or output_hidden_states:
            raise NotImplementedError("ArchlabForCausalLM does not return attentions or hidden states")
        if input_ids is None:
            raise ValueError("input_ids is required")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training

        cache = self._resolve_cache(cache, use_cache)
        past = cache.offset if cache is not None else 0
        B, T = input_ids.shape
        mask = self._key_mask(attention_mask, B, past + T)
        positions = self._positions(position_ids, attention_mask, past, T)

        targets = None
        if labels is not None:
            # HF labels are aligned with the inputs; archlab targets are the next tokens.
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).to(input_ids.device)
        out = self.model(input_ids, targets=targets, positions=positions,
                         cache=cache.model_cache if cache is not None else None, mask=mask)
        if cache is not None:
            cache._batch_size, cache._device = B, input_ids.device
        result = CausalLMOutputWithPast(loss=out.loss if labels is not None else None, logits=out.logits,
                                        **{CACHE_ARG: cache if use_cache else None})
        return result if return_dict else result.to_tuple()

    @staticmethod
    def _cache_argument(cache: Any, kwargs: dict[str, Any]) -> Any:
        """``cache``, or its pre-5.24 name ``past_key_values``; unknown keywords refused."""
        old = kwargs.pop("past_key_values", None)
        if old is not None:
            if cache is not None:
                raise TypeError("give the cache once: cache= or its deprecated name past_key_values=, not both")
            cache = old
        if kwargs:
            raise TypeError(f"ArchlabForCausalLM.forward() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        return cache

    def _resolve_cache(self, cache: Any, use_cache: bool) -> ArchlabCache | None:
        if cache is None:
            return self.new_cache() if use_cache else None
        if isinstance(cache, ArchlabCache):
            return cache
        if isinstance(cache, Cache) and cache.get_seq_length() == 0:
            # e.g. an empty DynamicCache() passed by habit: it cannot hold archlab state
            return self.new_cache()
        raise TypeError(f"cache must be an ArchlabCache (model.new_cache()), got {type(cache).__name__}")

    @staticmethod
    def _key_mask(attention_mask: torch.Tensor | None, batch: int, total: int) -> torch.Tensor | None:
        """HF 2-D mask -> archlab key mask (None when nothing is padded: the fast path)."""
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2:
            raise ValueError(
                f"attention_mask must be 2-D (batch, past + new tokens), got {tuple(attention_mask.shape)}"
            )
        if tuple(attention_mask.shape) != (batch, total):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch}, {total}) "
                "= (batch, cached + new tokens)"
            )
        mask = attention_mask.bool()
        return None if bool(mask.all()) else mask

    @staticmethod
    def _positions(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                   past: int, T: int) -> torch.Tensor | None:
        """archlab ``positions``: (T,) when every row agrees (archlab's shared-positions path,
        identical to what archlab's own generate passes), else (B, T); None = archlab default."""
        if position_ids is None:
            if attention_mask is None or bool(attention_mask.bool().all()):
                return None  # past .. past+T-1, archlab's default
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        position_ids = position_ids[..., -T:]
        if position_ids.dim() == 1:
            return position_ids
        if position_ids.shape[0] == 1 or bool((position_ids == position_ids[:1]).all()):
            return position_ids[0]
        return position_ids


__all__ = ["CACHE_ARG", "ArchlabCache", "ArchlabForCausalLM", "ArchlabLogitsWarper"]
