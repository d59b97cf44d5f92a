import importlib

from .backbones import DSNet
from .necks import DSFPN

__all__ = ['DSNet', 'DSFPN']

# The RoI extractor extends mmdet's; an mmseg-only install goes without it.
try:
    importlib.import_module('mmdet')
except ImportError:
    pass
else:
    from .roi_extractors import FP32SingleRoIExtractor  # noqa: F401

    __all__.append('FP32SingleRoIExtractor')
