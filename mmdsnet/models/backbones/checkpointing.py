"""Activation checkpointing that keeps BatchNorm running statistics exact.

Non-reentrant checkpointing re-runs a block's forward during backward; a BN
in training mode would then update its running statistics a second time.
The recompute context saves the BN buffers and restores them afterwards.
"""

import contextlib
from typing import Callable, Tuple

import torch.nn as nn
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
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``."""
    return lambda: (contextlib.nullcontext(), _restore_norm_buffers(module))
