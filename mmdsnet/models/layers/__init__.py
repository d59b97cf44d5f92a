from .ds_block import DSBlock, init_stream_convs, linear_drop_path_rates
from .fused_attention import ATTN_SPLIT_MODES

__all__ = ['ATTN_SPLIT_MODES', 'DSBlock', 'init_stream_convs', 'linear_drop_path_rates']
