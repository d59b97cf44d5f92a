"""Refuse a Runner checkpoint that leaves model weights unloaded or misshapen.

mmengine loads ``load_from`` and ``--resume`` checkpoints with
``strict=False`` and only logs what did not fit, so ``tools/test.py`` with a
backbone-only file (or another arch) scores a random head at mAP 0.000 and
exits 0. This hook checks the checkpoint against the model before mmengine
loads it (``after_load_checkpoint`` runs between reading and loading).
"""

import re
from typing import Mapping

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import find_latest_checkpoint

from ..checkpoint import (
    CheckpointMismatchError,
    StateDictFit,
    check_tensor_layouts,
    sample_keys,
)


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

    @staticmethod
    def _source(runner) -> str:
        """The path being loaded: ``load_from``, or what auto-resume found."""
        if getattr(runner, '_load_from', None):
            return str(runner._load_from)
        if getattr(runner, '_resume', False):
            found = find_latest_checkpoint(runner.work_dir)
            if found:
                return found
        return 'the checkpoint'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        source = self._source(runner)
        state = checkpoint.get('state_dict', checkpoint)
        if not isinstance(state, Mapping):
            raise CheckpointMismatchError(
                f"{source}: 'state_dict' is a {type(state).__name__}, not a dict of tensors; "
                "a Runner checkpoint ({'state_dict': {name: tensor}, ...}) is expected"
            )
        state = {re.sub(r'^module\.', '', key): value for key, value in state.items()}
        try:
            # Layouts and storage sizes first: nothing is materialised yet.
            check_tensor_layouts(state, source)
        except ValueError as err:
            raise CheckpointMismatchError(str(err)) from err
        model_state = model.state_dict()
        fit = StateDictFit(model_state, state)
        if fit.unexpected:
            runner.logger.info(
                f'{len(fit.unexpected)} checkpoint weights have no place in the '
                f'model and are ignored: {sample_keys(fit.unexpected)}'
            )
        if fit.missing or fit.mismatched:
            self._report_misfit(runner, source, len(model_state), fit.missing, fit.mismatch_lines())
        try:
            # Values of what will be loaded, cast to the model's dtypes.
            fit.check_values(source)
        except ValueError as err:
            raise CheckpointMismatchError(str(err)) from err

    def _report_misfit(self, runner, source, total, missing, mismatched) -> None:
        summary = (
            f'{source} does not fit the model: {len(missing)} of {total} '
            f'model weights are missing from it'
            + (f' (e.g. {sample_keys(missing)})' if missing else '')
            + f'; {len(mismatched)} have another shape'
            + (f' (e.g. {sample_keys(mismatched, 3)})' if mismatched else '')
            + '. A backbone-only file, another arch or another config?'
        )
        if self.allow_partial:
            runner.logger.warning(
                f'{summary} Continuing (partial load allowed): those weights '
                'keep their initial values.'
            )
            return
        if getattr(runner, '_resume', False):
            advice = (
                'Resuming needs a checkpoint saved with this config. To start from its '
                'weights anyway, train without --resume and with --cfg-options '
                'load_from=PATH (missing weights are then only logged).'
            )
        else:
            advice = 'Pass --allow-partial-load to evaluate anyway.'
        raise CheckpointMismatchError(
            f'{summary} Those weights would keep random values and every metric would be '
            f'meaningless. {advice}'
        )
