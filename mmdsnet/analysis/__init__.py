from .flops import commuted_conv_macs, count_flops, count_spec_flops, parameter_count, sdpa_flop_jit
from .memory import saved_activations_mb

__all__ = [
    'commuted_conv_macs',
    'count_flops',
    'count_spec_flops',
    'parameter_count',
    'saved_activations_mb',
    'sdpa_flop_jit',
]
