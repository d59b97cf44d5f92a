"""Argument checks shared by DSNet, DSBlock and DSFPN.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong type) naming
the argument, the value received and what is accepted, at construction time,
so a bad config fails before any data is loaded.
"""

import math
import numbers

import torch.nn as nn


def check_rate(name: str, value) -> float:
    """A dropout or stochastic-depth probability: a real number in [0, 1).

    1 would zero every path (DropPath divides by ``1 - p``), > 1 rescales,
    < 0 or NaN silently disables: all refused.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'{name} must be a float in [0, 1), got {value!r}')
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f'{name} must be in [0, 1) (a probability of dropping), got {value!r}')
    return float(value)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """An int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
    return int(value)


def check_positive_float(name: str, value) -> float:
    """A finite real number > 0 (e.g. an FFN expansion ratio)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f'{name} must be a finite number > 0, got {value!r}')
    return float(value)


def check_heads(name: str, channels: int, num_heads) -> int:
    """Heads for a stream of ``channels // 2`` channels: an int >= 1 dividing it."""
    num_heads = check_positive_int(name, num_heads)
    half = channels // 2
    if half % num_heads:
        raise ValueError(
            f'{name}={num_heads} must divide the {half} channels of each '
            f'stream (half of {channels})'
        )
    return num_heads


def check_bool(name: str, value) -> bool:
    """A switch: exactly ``True`` or ``False``.

    Anything else is refused rather than read for its truth value: a
    non-empty string such as ``'no'`` (what ``--cfg-options`` passes for any
    value but true/false) would otherwise turn the feature on.
    """
    if not isinstance(value, bool):
        raise TypeError(
            f'{name} must be True or False, got {value!r} ({type(value).__name__}); with '
            '--cfg-options write key=True or key=False'
        )
    return value


def check_choice(name: str, value, choices) -> str:
    """One of the strings ``choices`` (a mode switch such as ``attn_split``)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f'{name} must be one of {tuple(choices)}, got {value!r}')
    return value


def check_int_in(name: str, value, low: int, high: int) -> int:
    """An int in ``low..high`` inclusive (bools refused: ``True`` is not a stage)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not (low <= value <= high)
    ):
        raise ValueError(f'{name} must be an int in {low}..{high}, got {value!r}')
    return int(value)


def check_mlp_ratio(name: str, ratio, channels: int) -> float:
    """An FFN expansion ratio whose hidden width ``int(channels * ratio)`` is >= 1.

    A smaller ratio builds a 1x1 conv with zero output channels, which fails
    only in the forward pass.
    """
    ratio = check_positive_float(name, ratio)
    if int(channels * ratio) < 1:
        raise ValueError(
            f'{name}={ratio!r} gives a hidden width of int({channels} * {ratio!r}) = 0 '
            f'channels; it must be >= {1 / channels:.6g} for {channels} channels'
        )
    return ratio


# Norm layers that normalise an NCHW map over its channel dimension. 'LN'
# (nn.LayerNorm over the last dimension), 'BN1d'/'BN3d' and 'IN1d'/'IN3d'
# build but fail (or misread the batch as channels) on a 4-D map.
NCHW_NORM_TYPES = ('BN', 'BN2d', 'SyncBN', 'GN', 'IN', 'IN2d')


def check_nchw_norm_cfg(name: str, norm_cfg) -> dict:
    """A ``norm_cfg`` dict whose ``type`` works on NCHW feature maps."""
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise TypeError(f"{name} must be a dict with a 'type' key, got {norm_cfg!r}")
    norm_type = norm_cfg['type']
    nchw_classes = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d)
    if isinstance(norm_type, type):
        accepted = issubclass(norm_type, nchw_classes)
    else:
        accepted = norm_type in NCHW_NORM_TYPES
    if not accepted:
        raise ValueError(
            f'{name} type {norm_type!r} does not normalise NCHW feature maps; accepted: '
            f'{", ".join(NCHW_NORM_TYPES)} (or a subclass of BatchNorm2d, SyncBatchNorm, '
            'GroupNorm or InstanceNorm2d). LayerNorm (LN) normalises the last dimension '
            'and fails on these maps.'
        )
    return norm_cfg
