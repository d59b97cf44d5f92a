"""Utilities for mmdsnet (config lookup)."""

from .config import load_config_file, resolve_config_path

__all__ = ['load_config_file', 'resolve_config_path']
