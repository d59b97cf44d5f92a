from .ds_block import DSBlock, linear_drop_path_rates

__all__ = ['DSBlock', 'linear_drop_path_rates']
