"""``ArchlabCache``: archlab's decoding state behind transformers' ``Cache`` interface.

archlab keeps per-layer decoding state in its own objects (``KVCache`` for attention, whatever
another mixer's ``init_cache`` returns), which HF's ``DynamicCache`` cannot hold; this adapter
carries an archlab ``ModelCache`` through ``generate`` (beam search reorders it through
``reorder_cache``). It cannot be rolled back (``crop``): the models that use it declare
themselves stateful, so transformers refuses assisted decoding up front.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers.cache_utils import Cache

from archlab.models.lm import ModelCache


class ArchlabCache(Cache):
    """``transformers.Cache`` facade over an archlab :class:`~archlab.models.lm.ModelCache`.

    The archlab per-layer caches are opaque to transformers (they are not ``CacheLayerMixin``
    objects), so the base class gets an empty ``layers`` list and everything transformers asks
    of a cache in generation (length, batch reordering/selection/repetition) is answered here
    from the archlab objects.
    """

    def __init__(self, model_cache: ModelCache, *, factory: Callable[[], ModelCache] | None = None) -> None:
        super().__init__(layers=[])
        self.model_cache = model_cache
        self._factory = factory  # for reset()
        # Learnt from each forward: batch_repeat_interleave builds its own row index.
        self._batch_size = -1
        self._device: torch.device | None = None

    def __repr__(self) -> str:
        return f"ArchlabCache(layers={len(self.model_cache.layers)}, offset={self.model_cache.offset})"

    def __len__(self) -> int:
        return len(self.model_cache.layers)

    @property
    def offset(self) -> int:
        """Tokens already consumed (the position of the next token without padding)."""
        return self.model_cache.offset

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.model_cache.offset

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # grows on demand

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.model_cache.offset + query_length, 0

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def is_compileable(self) -> bool:
        return False  # dynamic shapes, python-side bookkeeping: never auto-compiled by generate

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.model_cache.offset > 0

    @property
    def is_linear(self) -> list[bool]:
        # Every archlab layer state advances with the tokens and the cache knows its length, so
        # none is "linear" in transformers' sense (a state without a sequence length); generate
        # then slices a continued prompt down to the tokens the cache has not seen.
        return [False] * len(self.model_cache.layers)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.model_cache.reorder(beam_idx.to(self._device) if self._device is not None else beam_idx)
        self._batch_size = int(beam_idx.numel())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        indices = torch.as_tensor(indices, dtype=torch.long, device=self._device)
        self.model_cache.reorder(indices)
        self._batch_size = int(indices.numel())

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.model_cache.offset == 0 or self._batch_size < 0:
            return  # nothing stored yet: the first forward will see the expanded batch
        index = torch.arange(self._batch_size, device=self._device).repeat_interleave(repeats)
        self.model_cache.reorder(index)
        self._batch_size *= repeats

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise NotImplementedError(
            "archlab caches cannot be rolled back (crop); assisted/speculative decoding is not supported"
        )

    def reset(self) -> None:
        if self._factory is None:
            raise NotImplementedError("this ArchlabCache was built without a factory; make a new one")
        self.model_cache = self._factory()
        self._batch_size = -1

    def activate_past_recording(self) -> None:
        pass  # nothing is ever cropped


__all__ = ["ArchlabCache"]
