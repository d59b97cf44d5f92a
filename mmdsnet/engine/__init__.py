"""Runner hooks that make training and evaluation fail loudly instead of
silently: checkpoints that do not fit the model, and saves cut by a kill."""

from .checkpoint_fit_hook import CheckpointFitHook, CheckpointMismatchError
from .checkpoint_hook import AtomicCheckpointHook, use_atomic_checkpoint_hook

__all__ = [
    'AtomicCheckpointHook',
    'CheckpointFitHook',
    'CheckpointMismatchError',
    'use_atomic_checkpoint_hook',
]
