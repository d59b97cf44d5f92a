"""mmdsnet: DS-Net (Dual-stream Network, NeurIPS 2021) for mmdet 3.x and mmseg 1.x.

``import mmdsnet`` registers ``DSNet`` and ``DSFPN`` in mmdet's and mmseg's
``MODELS`` (whichever are installed).
"""
from . import models  # noqa: F401  (registers the models)
from .utils.compat import allow_runner_checkpoint_globals
from .version import __version__

# Runner checkpoints (resume, load_from, tools/test.py) load with
# torch.load(weights_only=True) on torch >= 2.6 once their types are allowed.
allow_runner_checkpoint_globals()

__all__ = ['__version__', 'models']
