from .single_level_fp32 import FP32SingleRoIExtractor

__all__ = ['FP32SingleRoIExtractor']
