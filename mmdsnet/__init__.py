"""mmdsnet: DS-Net (Dual-stream Network, NeurIPS 2021) for mmdet 3.x, mmseg 1.x and mmpretrain 1.x.

``import mmdsnet`` registers ``DSNet`` and ``DSFPN`` in mmdet's, mmseg's and
mmpretrain's ``MODELS`` (whichever are installed), the checkpoint hooks in mmengine's
``HOOKS``, mmengine's weights-only loaders for Runner checkpoints (local files
and http(s) URLs), and the guards of :func:`mmdsnet.engine.guard_checkpoint_routes`.
"""

from . import engine, models  # noqa: F401  (registers the hooks and models)
from .engine import allow_runner_checkpoint_globals, guard_checkpoint_routes
from .version import __version__

# Runner checkpoints (resume, load_from, tools/test.py, inferencers) load with
# weights_only=True on torch >= 2.6: mmengine's local loader allows their
# types for each load; torch.load elsewhere in the process is unchanged.
allow_runner_checkpoint_globals()
# http(s) checkpoints load weights-only too; inferencers do not run the config
# stored in a checkpoint unless trusted; auto-resume stays inside the work dir.
guard_checkpoint_routes()

__all__ = ['__version__', 'models']
