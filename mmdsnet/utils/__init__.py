"""Utilities for mmdsnet (framework compatibility helpers)."""
from .compat import allow_runner_checkpoint_globals, patch_cpu_distributed

__all__ = ['allow_runner_checkpoint_globals', 'patch_cpu_distributed']
