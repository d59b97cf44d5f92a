"""mmdsnet: DS-Net (Dual-stream Network, NeurIPS 2021) for mmdet 3.x and mmseg 1.x.

``import mmdsnet`` registers ``DSNet`` and ``DSFPN`` in mmdet's and mmseg's
``MODELS`` (whichever are installed).
"""
from .version import __version__
from . import models  # noqa: F401,E402  (registers the models)

__all__ = ['__version__', 'models']
