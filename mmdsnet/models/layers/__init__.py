from .ds_block import DSBlock, linear_drop_path_rates
from .fused_attention import ATTN_SPLIT_MODES

__all__ = ['ATTN_SPLIT_MODES', 'DSBlock', 'linear_drop_path_rates']
