"""Runner hooks that make training and evaluation fail loudly instead of
silently: checkpoints that do not fit the model, and saves cut by a kill."""

from .checkpoint_fit_hook import CheckpointFitHook, CheckpointMismatchError
from .checkpoint_hook import (
    AtomicCheckpointHook,
    CheckpointSaveError,
    remove_interrupted_saves,
    use_atomic_checkpoint_hook,
)
from .epoch_seed_hook import EpochSeedHook, use_epoch_seed_hook
from .work_dir_lock import WorkDirBusyError, lock_work_dir, release_work_dir

__all__ = [
    'AtomicCheckpointHook',
    'CheckpointFitHook',
    'CheckpointMismatchError',
    'CheckpointSaveError',
    'EpochSeedHook',
    'WorkDirBusyError',
    'lock_work_dir',
    'release_work_dir',
    'remove_interrupted_saves',
    'use_atomic_checkpoint_hook',
    'use_epoch_seed_hook',
]
