"""Helpers for tests and benchmarks: the explicit-attention reference model (not needed to
train or test models)."""

from .norm_stats import randomize_norm_stats
from .reference_dsnet import ReferenceDSNet, explicit_attention, reference_for

__all__ = ['ReferenceDSNet', 'explicit_attention', 'reference_for', 'randomize_norm_stats']
