"""GroupNorm that also accepts a group holding a single value.

``F.group_norm`` refuses any input whose groups hold one value each (batch 1,
one channel per group, a 1x1 map), in eval mode too, with "Expected more than
1 value per channel when training". DS-FPN's default GroupNorm meets exactly
that on the stride-32 level of a 32x32 image when the half width of a block
equals ``num_groups``. The normalised value of a one-value group is 0, so the
output there is the affine bias; :class:`OneValueGroupNorm` returns it.
"""

import math

import torch
import torch.nn as nn


class OneValueGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) defined for groups of one value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values_per_group = x.shape[0] * (x.shape[1] // self.num_groups) * math.prod(x.shape[2:])
        if values_per_group != 1:
            return super().forward(x)
        # x - mean is exactly zero (and so is its gradient): the output is the
        # bias, or zero without affine parameters.
        out = torch.zeros_like(x)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def allow_one_value_groups(layer: nn.Module) -> nn.Module:
    """Give a plain ``nn.GroupNorm`` the forward of :class:`OneValueGroupNorm`."""
    if type(layer) is nn.GroupNorm:
        layer.__class__ = OneValueGroupNorm
    return layer
