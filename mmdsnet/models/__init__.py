import importlib.util

from .backbones import DSNet
from .necks import DSFPN

__all__ = ['DSNet', 'DSFPN']

# The RoI extractor extends mmdet's; an mmseg-only install goes without it.
if importlib.util.find_spec('mmdet') is not None:
    from .roi_extractors import FP32SingleRoIExtractor  # noqa: F401

    __all__.append('FP32SingleRoIExtractor')
