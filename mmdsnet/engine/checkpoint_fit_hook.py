"""Refuse a Runner checkpoint that leaves model weights unloaded or misshapen.

mmengine loads ``load_from`` and ``--resume`` checkpoints with
``strict=False`` and only logs what did not fit, so ``tools/test.py`` with a
backbone-only file (or another arch) scores a random head at mAP 0.000 and
exits 0. This hook checks the checkpoint against the model before mmengine
loads it (``after_load_checkpoint`` runs between reading and loading).
"""

import re
from typing import Dict, List, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model (or holds non-finite weights)."""


def _sample(keys: List[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f', ... ({len(keys)} in all)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def compare_state_dicts(
    model_state: Dict[str, torch.Tensor], checkpoint_state: Dict[str, object]
) -> Tuple[list, list, list]:
    """(missing, mismatched, unexpected) keys of a checkpoint against a model."""
    mismatched = [
        f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(model_state[key].shape)}'
        for key, value in checkpoint_state.items()
        if key in model_state
        and isinstance(value, torch.Tensor)
        and value.shape != model_state[key].shape
    ]
    missing = [key for key in model_state if key not in checkpoint_state]
    unexpected = [key for key in checkpoint_state if key not in model_state]
    return missing, mismatched, unexpected


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Fail before loading a checkpoint that does not fit the model.

    Args:
        allow_partial (bool): Log the missing and mismatched weights as a
            warning instead of failing, for an intended partial load.
            Non-finite weights are refused either way.
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_partial: bool = False):
        self.allow_partial = allow_partial

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = checkpoint.get('state_dict', checkpoint)
        state = {re.sub(r'^module\.', '', key): value for key, value in state.items()}
        source = getattr(runner, '_load_from', None) or 'the checkpoint'
        for key, value in state.items():
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                raise CheckpointMismatchError(
                    f'{source}: weight {key!r} holds NaN or Inf values (a diverged run?); '
                    'refusing to evaluate or resume from it'
                )
        model_state = model.state_dict()
        missing, mismatched, unexpected = compare_state_dicts(model_state, state)
        if unexpected:
            runner.logger.info(
                f'{len(unexpected)} checkpoint weights have no place in the '
                f'model and are ignored: {_sample(unexpected)}'
            )
        if not missing and not mismatched:
            return
        summary = (
            f'{source} does not fit the model: {len(missing)} of {len(model_state)} '
            f'model weights are missing from it'
            + (f' (e.g. {_sample(missing)})' if missing else '')
            + f'; {len(mismatched)} have another shape'
            + (f' (e.g. {_sample(mismatched, 3)})' if mismatched else '')
            + '. A backbone-only file, another arch or another config?'
        )
        if self.allow_partial:
            runner.logger.warning(
                f'{summary} Continuing (partial load allowed): those weights '
                'keep their initial values.'
            )
            return
        raise CheckpointMismatchError(
            f'{summary} Those weights would keep random values and every metric would be '
            'meaningless. Pass --allow-partial-load to evaluate anyway.'
        )
