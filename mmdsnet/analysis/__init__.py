from .flops import count_flops, parameter_count, sdpa_flop_jit

__all__ = ['count_flops', 'parameter_count', 'sdpa_flop_jit']
