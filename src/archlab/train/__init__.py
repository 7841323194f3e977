"""Training: optimiser and schedule, checkpoints, evaluation, the loop."""

from archlab.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from archlab.train.evaluate import evaluate
from archlab.train.trainer import Trainer, TrainingStopped

__all__ = ["Trainer", "TrainingStopped", "CheckpointError", "save_checkpoint", "load_checkpoint", "evaluate"]
