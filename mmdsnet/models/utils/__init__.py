from .ckpt_convert import convert_file, detect_layout, dsnet_convert, read_checkpoint

__all__ = ['dsnet_convert', 'read_checkpoint', 'detect_layout', 'convert_file']
