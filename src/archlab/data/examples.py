"""Batches of whole examples (task inputs, utterances) drawn with replacement.

``batch(step)`` is a pure function of (seed, step), so a resumed run sees the batches it would
have seen; under data parallelism rank r takes the r-th slice of the step's draws, so the
global batch does not depend on the number of processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ExampleSampler:
    """Subclasses turn the drawn indices into tensors (:meth:`rows`)."""

    def __init__(self, split: Any, *, batch_size: int, seed: int, ignore_index: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(f"{type(self).__name__}: need 0 <= rank < world_size dividing batch_size, got "
                             f"rank={rank}, world_size={world_size}, batch_size={batch_size}")
        self.split, self.batch_size, self.seed = split, int(batch_size), int(seed)
        self.ignore_index, self.rank, self.world_size = ignore_index, rank, world_size
        self.local_batch_size = batch_size // world_size

    def global_indices(self, step: int) -> np.ndarray:
        """The example indices of ``step`` across all ranks."""
        if step < 0:
            raise ValueError(f"{type(self).__name__}: step must be >= 0, got {step}")
        return np.random.default_rng([self.seed, int(step)]).integers(0, len(self.split), size=self.batch_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.local_batch_size
        return self.rows(self.global_indices(step)[self.rank * b:(self.rank + 1) * b])

    def rows(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
