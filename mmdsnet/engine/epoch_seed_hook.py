"""Re-seed the random generators at the start of every training epoch.

mmengine seeds Python's ``random``, numpy and torch once, when the Runner is
built, and does not save their states in checkpoints. An epoch-based run
resumed after a kill therefore restarts them from the seed, while the
uninterrupted run has carried them through the earlier epochs: random data
augmentation (mmcv's RandomResize/RandomCrop/RandomFlip draw from numpy's
global generator) and stochastic depth then differ, and the two runs end with
different weights. Seeding every epoch from ``(seed, epoch)`` makes the state
at an epoch's start the same however the run got there.
"""

import warnings

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner.utils import set_random_seed


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Seed ``random``, numpy and torch with ``runner.seed + epoch`` before each
    training epoch (plus the rank when ``randomness.diff_rank_seed``).

    Epoch-based loops only: an iteration-based loop has a single epoch, and a
    resume there starts mid-stream (see docs/configs.md).
    """

    priority = 'VERY_HIGH'

    def before_train_epoch(self, runner) -> None:
        seed = getattr(runner, 'seed', None)
        if seed is None:
            return
        diff_rank_seed = bool(getattr(runner, '_randomness_cfg', {}).get('diff_rank_seed', False))
        set_random_seed((seed + runner.epoch) % 2**32, diff_rank_seed=diff_rank_seed)


def use_epoch_seed_hook(cfg) -> None:
    """Add :class:`EpochSeedHook` to an epoch-based training config (once).

    A resumed run of another loop (the iteration-based ADE20K configs) does not
    repeat the uninterrupted run bit for bit: that is warned about.
    """
    train_cfg = cfg.get('train_cfg') or {}
    loop = train_cfg.get('type', 'EpochBasedTrainLoop' if train_cfg.get('by_epoch') else None)
    if loop not in ('EpochBasedTrainLoop', 'mmengine.EpochBasedTrainLoop'):
        if train_cfg and cfg.get('resume', False):
            warnings.warn(
                f'resuming a run whose train loop is {loop or "not epoch-based"}: the random '
                'generators '
                'restart from the seed at the resumed iteration, so random augmentation and '
                'stochastic depth differ from the uninterrupted run and the result is not '
                'bit-identical to it (only epoch-based loops are; docs/configs.md)',
                UserWarning,
                stacklevel=2,
            )
        return
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(h.get('type') in ('EpochSeedHook', EpochSeedHook) for h in hooks):
        cfg.custom_hooks = [*hooks, dict(type='EpochSeedHook')]
