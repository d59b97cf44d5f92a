"""Argument checks shared by DSNet, DSBlock and DSFPN.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong type) naming
the argument, the value received and what is accepted, at construction time,
so a bad config fails before any data is loaded.
"""

import math
import numbers


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
