"""Whether a checkpoint's weights fit a model: keys, shapes, dtypes, possible values.

One comparison (:class:`StateDictFit`) and one value check
(:func:`check_weight_value`) serve both the backbone's ``Pretrained`` loader
(``mmdsnet/models/backbones/pretrained.py``) and ``CheckpointFitHook``
(``load_from`` and ``--resume``); each applies its own policy to the result.
"""

import warnings
from typing import Dict, List, Mapping, Optional, Tuple

import torch


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model (or holds non-finite weights)."""


def check_all_tensors(state_dict: Mapping[str, object], source: str) -> None:
    """Every value of weights that are about to be loaded must be a tensor."""
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f'{source}: value of {key!r} is a {type(value).__name__}, not a '
                'tensor; this is not a weights file (or not only one)'
            )


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return 'bool'
    if dtype.is_complex:
        return 'complex'
    return 'floating' if dtype.is_floating_point else 'integer'


def check_weight_value(
    key: str, value: torch.Tensor, source: str, target_dtype: Optional[torch.dtype] = None
) -> None:
    """The tensor converts to ``target_dtype`` (its kind must match) and is finite after.

    A NaN or Inf weight makes every output NaN without any error; float64
    values beyond float32's range only become Inf in the cast, so the check
    is made on the cast values. A negative BatchNorm ``running_var`` (every
    eval output NaN) is refused too, and a magnitude whose square overflows
    the dtype (every output Inf after a product or two) is warned about with
    its key: huge weights are unusual but not impossible. Integers and bools are not silently turned
    into float weights, nor complex numbers into real ones. Without a
    target, floating and integer tensors are accepted. Call it on tensors
    whose layout is checked (:func:`~mmdsnet.checkpoint.reading.check_tensor_layouts`):
    it reads every value.
    """
    kind = _dtype_kind(value.dtype)
    if target_dtype is None:
        target_dtype = value.dtype
        if kind not in ('floating', 'integer'):
            raise ValueError(
                f'{source}: tensor {key!r} is {value.dtype}; floating (weights) or integer '
                '(counters) tensors are accepted'
            )
    want = _dtype_kind(target_dtype)
    if kind != want:
        raise ValueError(
            f'{source}: tensor {key!r} is {value.dtype}, which does not convert to the '
            f"model's {target_dtype}; a {want} tensor is accepted there"
        )
    if want not in ('floating', 'complex'):
        return
    cast = value.to(target_dtype)
    if not bool(torch.isfinite(cast).all()):
        bad = 'NaN' if bool(torch.isnan(cast).any()) else 'Inf'
        after = f' after conversion to {target_dtype}' if value.dtype != target_dtype else ''
        raise ValueError(
            f'{source}: weight {key!r} {tuple(value.shape)} holds {bad} values{after}; '
            'refusing a corrupt (or diverged) checkpoint: finite weights are accepted'
        )
    _check_statistic(key, cast, source)
    _warn_overflow(key, cast, source)


def _check_statistic(key: str, cast: torch.Tensor, source: str) -> None:
    """A BatchNorm running variance is never negative (its square root is NaN)."""
    if key.rsplit('.', 1)[-1] != 'running_var' or cast.is_complex():
        return
    negative = cast < 0
    if bool(negative.any()):
        raise ValueError(
            f'{source}: BatchNorm variance {key!r} {tuple(cast.shape)} holds '
            f'{int(negative.sum())} negative values (min {cast.min().item():.3g}); every '
            'output would be NaN. Refusing a corrupt checkpoint: variances >= 0 are accepted'
        )


def _warn_overflow(key: str, cast: torch.Tensor, source: str) -> None:
    """Warn about values whose product with one another overflows the dtype."""
    if cast.numel() == 0:
        return
    limit = torch.finfo(cast.dtype).max ** 0.5
    largest = cast.abs().max().item()
    if largest > limit:
        warnings.warn(
            f'{source}: weight {key!r} {tuple(cast.shape)} reaches magnitude '
            f"{largest:.3g}, beyond {limit:.3g} (the square root of {cast.dtype}'s "
            'largest value): products in the forward overflow and outputs become Inf. '
            'A corrupt or diverged checkpoint?',
            RuntimeWarning,
            stacklevel=3,
        )


class StateDictFit:
    """A checkpoint's weights compared with a model's state dict, key by key.

    Attributes:
        loadable (dict): The checkpoint's tensors whose key the model has,
            with the model's shape (checkpoint order).
        mismatched (dict): Key -> (checkpoint shape, model shape) for
            tensors of the model's keys with another shape.
        missing (list): Model keys the checkpoint lacks (model order).
        unexpected (list): Checkpoint keys the model lacks (checkpoint order).

    Values that are not tensors count as present but neither load nor
    mismatch; callers that need tensors say so with :func:`check_all_tensors`.
    """

    def __init__(
        self, model_state: Mapping[str, torch.Tensor], checkpoint_state: Mapping[str, object]
    ):
        self.model_state = model_state
        self.loadable: Dict[str, torch.Tensor] = {}
        self.mismatched: Dict[str, Tuple[tuple, tuple]] = {}
        for key, value in checkpoint_state.items():
            if key not in model_state or not isinstance(value, torch.Tensor):
                continue
            if value.shape == model_state[key].shape:
                self.loadable[key] = value
            else:
                self.mismatched[key] = (tuple(value.shape), tuple(model_state[key].shape))
        self.missing: List[str] = [key for key in model_state if key not in checkpoint_state]
        self.unexpected: List[str] = [key for key in checkpoint_state if key not in model_state]

    def mismatch_lines(self) -> List[str]:
        """``'key: checkpoint (shape) vs model (shape)'`` per mismatched tensor, by key."""
        return [
            f'{key}: checkpoint {got} vs model {want}'
            for key, (got, want) in sorted(self.mismatched.items())
        ]

    def check_values(self, source: str) -> None:
        """:func:`check_weight_value` of every loadable tensor, cast to the model's dtype."""
        for key, value in self.loadable.items():
            check_weight_value(key, value, source, self.model_state[key].dtype)
