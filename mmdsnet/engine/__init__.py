"""mmdsnet's parts of mmengine's Runner: hooks that make training and
evaluation fail loudly instead of silently (checkpoints that do not fit the
model, saves cut by a kill), the work dir's run lock, mmengine's checkpoint
routes made weights-only, and CPU multi-process training."""

from ..checkpoint import CheckpointMismatchError, CheckpointSaveError
from .atomic_checkpoint_hook import AtomicCheckpointHook, use_atomic_checkpoint_hook
from .checkpoint_fit_hook import CheckpointFitHook
from .checkpoint_routes import (
    TRUST_CONFIG_ENV,
    allow_runner_checkpoint_globals,
    guard_checkpoint_routes,
    load_from_local_weights_only,
)
from .cpu_distributed import patch_cpu_distributed
from .epoch_seed_hook import EpochSeedHook, use_epoch_seed_hook
from .work_dir_lock import WorkDirBusyError, WorkDirLockError, lock_work_dir, release_work_dir

__all__ = [
    'TRUST_CONFIG_ENV',
    'AtomicCheckpointHook',
    'CheckpointFitHook',
    'CheckpointMismatchError',
    'CheckpointSaveError',
    'EpochSeedHook',
    'WorkDirBusyError',
    'WorkDirLockError',
    'allow_runner_checkpoint_globals',
    'guard_checkpoint_routes',
    'load_from_local_weights_only',
    'lock_work_dir',
    'patch_cpu_distributed',
    'release_work_dir',
    'use_atomic_checkpoint_hook',
    'use_epoch_seed_hook',
]
