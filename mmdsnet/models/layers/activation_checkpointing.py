"""Activation checkpointing that keeps BatchNorm running statistics exact.

Checkpointing drops a module's intermediate activations after its forward and
re-runs the forward during backward to get them back: less memory for one
extra forward. Non-reentrant checkpointing re-runs the forward in training
mode, so a BN would update its running statistics a second time; the
recompute context saves the BN buffers and restores them afterwards.
(Here "checkpoint" means recomputed activations; everywhere else in this
package it means a weights file.)
"""

import contextlib
from typing import Callable, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def _restore_norm_buffers(module: nn.Module):
    norms = [
        m
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [{name: buf.clone() for name, buf in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        for norm, buffers in zip(norms, saved):
            for name, value in buffers.items():
                getattr(norm, name).copy_(value)


def frozen_norm_stats_on_recompute(module: nn.Module) -> Callable[[], Tuple]:
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: the forward
    runs as usual, the recompute leaves ``module``'s BN buffers as they were."""
    return lambda: (contextlib.nullcontext(), _restore_norm_buffers(module))


def checkpointed(
    forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor
) -> torch.Tensor:
    """``forward(x)`` keeping only ``x`` for backward (non-reentrant), with
    ``module``'s BN statistics updated once."""
    return cp.checkpoint(
        forward, x, use_reentrant=False, context_fn=frozen_norm_stats_on_recompute(module)
    )
