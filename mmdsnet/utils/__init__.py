"""Utilities for mmdsnet (framework compatibility helpers, config lookup)."""

from .compat import allow_runner_checkpoint_globals, patch_cpu_distributed
from .config import load_config_file, resolve_config_path

__all__ = [
    'allow_runner_checkpoint_globals',
    'patch_cpu_distributed',
    'load_config_file',
    'resolve_config_path',
]
