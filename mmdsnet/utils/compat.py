"""Compatibility shims for running mmengine 0.10.x on current PyTorch.

Two problems are handled here, each by one idempotent function:

* :func:`allow_runner_checkpoint_globals` - since torch 2.6, ``torch.load``
  defaults to ``weights_only=True``. Checkpoints written by mmengine's
  ``Runner`` carry a pickled ``MessageHub`` (``HistoryBuffer`` objects holding
  numpy arrays, numpy scalars such as ``eta``/``best_score``), so resume,
  ``load_from`` and ``tools/test.py`` fail with ``Unsupported global``. We
  allow exactly the types such checkpoints contain, inside mmengine's local
  checkpoint loader only, instead of turning ``weights_only`` off or
  widening ``torch.load`` for the whole process.
* :func:`patch_cpu_distributed` - mmengine 0.10.7's ``--launcher pytorch``
  path assumes CUDA. On CPU-only machines we make it use gloo and plain CPU
  DDP so that ``tools/dist_train.sh`` works unchanged.
"""

import contextlib
import copy
import logging
import os.path as osp
import zipfile
from typing import Any, Callable, List, Optional, Tuple

import torch

__all__ = [
    'allow_runner_checkpoint_globals',
    'load_from_local_weights_only',
    'runner_checkpoint_globals',
    'patch_cpu_distributed',
]

# ---------------------------------------------------------------------------
# 1. weights_only checkpoint loading
# ---------------------------------------------------------------------------

#: ``HistoryBuffer.__getstate__`` pickles its statistics methods
#: (``HistoryBuffer.min`` ...). With pickle protocol 2 (torch.save's default)
#: a method is stored as ``getattr(HistoryBuffer, 'min')``, i.e. a call to
#: ``builtins.getattr``. Only these names are ever written by mmengine.
_HISTORY_BUFFER_METHODS = frozenset(('min', 'max', 'current', 'mean'))

_checkpoint_globals_allowed = False


def _torch_version() -> Tuple[int, int]:
    """Return (major, minor) of the installed torch."""
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(''.join(ch for ch in minor if ch.isdigit()) or 0)


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Restricted stand-in for ``builtins.getattr`` during weights_only load.

    Registered under the name ``builtins.getattr`` so the unpickler can
    rebuild ``HistoryBuffer`` statistics methods, while any other use of
    ``getattr`` in a checkpoint (e.g. to reach ``os.system``) is refused.
    """
    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    import pickle

    raise pickle.UnpicklingError(
        f'weights_only load: getattr({obj!r}, {name!r}) is not allowed; '
        'mmdsnet only permits HistoryBuffer statistics methods '
        f'{sorted(_HISTORY_BUFFER_METHODS)}.'
    )


def _numpy_safe_globals() -> Tuple[List[Any], List[Tuple[Any, str]]]:
    """Numpy objects found in Runner checkpoints.

    Returns plain objects (matched by their own ``module.qualname``) and
    ``(object, name)`` aliases so checkpoints pickled under numpy 1.x
    (``numpy.core.multiarray``) and numpy 2.x (``numpy._core.multiarray``)
    both load with either numpy installed.
    """
    import numpy as np

    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    plain: List[Any] = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    # Concrete dtype classes seen in Runner checkpoints: float64/int64 from
    # HistoryBuffer's log/count arrays and ``eta``; float32 from metrics kept
    # raw in runtime_info (e.g. mmseg IoUMetric -> CheckpointHook best_score).
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    if dtypes is not None:
        plain += [dtypes.Float64DType, dtypes.Int64DType, dtypes.Float32DType]
    aliases = []
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        for fn in (multiarray._reconstruct, multiarray.scalar):
            aliases.append((fn, f'{module}.{fn.__name__}'))
    return plain, aliases


def runner_checkpoint_globals() -> List[Any]:
    """The non-tensor types of mmengine Runner checkpoints, for ``safe_globals``.

    ``HistoryBuffer``, numpy arrays, scalars and dtypes (under both numpy 1.x
    and 2.x module names) and a restricted ``getattr`` that only rebuilds
    ``HistoryBuffer`` statistics methods. Empty before torch 2.6, whose
    unpickler neither defaults to weights_only nor takes ``(obj, name)`` pairs.
    """
    if _torch_version() < (2, 6):
        return []
    from mmengine.logging import HistoryBuffer

    plain, aliases = _numpy_safe_globals()
    return [HistoryBuffer] + plain + aliases + [(_history_buffer_getattr, 'builtins.getattr')]


def load_from_local_weights_only(filename: str, map_location=None) -> dict:
    """mmengine's local checkpoint loader with the Runner types allowed.

    ``weights_only`` stays on; the allowed types hold for this load only, so
    ``import mmdsnet`` does not change what ``torch.load`` accepts elsewhere.
    An empty path (an empty ``last_checkpoint``) and a truncated file (a
    killed save) get errors that say so.
    """
    if not filename:
        raise FileNotFoundError(
            "empty checkpoint path: the work dir's last_checkpoint file is empty (an "
            'interrupted save?); pass the checkpoint to --resume explicitly'
        )
    from mmengine.runner.checkpoint import load_from_local

    allowed = runner_checkpoint_globals()
    scope = torch.serialization.safe_globals(allowed) if allowed else contextlib.nullcontext()
    try:
        with scope:
            return load_from_local(filename, map_location)
    except (RuntimeError, EOFError) as err:
        path = osp.expanduser(filename)
        if osp.isfile(path) and not zipfile.is_zipfile(path):
            raise RuntimeError(
                f'checkpoint {filename} is incomplete or not a torch checkpoint '
                f'({osp.getsize(path)} bytes, no zip directory; an interrupted save?): '
                f'{err}'
            ) from err
        raise


def allow_runner_checkpoint_globals() -> bool:
    """Let mmengine load Runner checkpoints on torch >= 2.6, and nothing else.

    Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, and the
    ``MessageHub`` that mmengine pickles into every Runner checkpoint (resume,
    ``load_from``, ``tools/test.py``, inferencers) is refused. This registers
    :func:`load_from_local_weights_only` as mmengine's loader for local paths, which
    allows exactly those types for the duration of each load. Safe to call
    repeatedly.

    Returns:
        bool: True once the loader is registered.
    """
    global _checkpoint_globals_allowed
    if _checkpoint_globals_allowed:
        return True
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only, force=True)
    _checkpoint_globals_allowed = True
    return True


# ---------------------------------------------------------------------------
# 2. CPU-only multi-process training (gloo)
# ---------------------------------------------------------------------------

_orig_init_dist_pytorch: Optional[Callable] = None
_orig_wrap_model: Optional[Callable] = None


def _cpu_only() -> bool:
    """True when mmengine would place the model on the CPU."""
    from mmengine.device import get_device

    return get_device() == 'cpu'


def _log(msg: str, logger: Any = 'current') -> None:
    from mmengine.logging import print_log

    print_log(msg, logger=logger, level=logging.WARNING)


def _init_dist_pytorch_cpu(backend: str, init_backend: str = 'torch', **kwargs) -> None:
    """``mmengine.dist.utils._init_dist_pytorch`` that also works on CPU.

    mmengine 0.10.7 (mmengine/dist/utils.py, ``_init_dist_pytorch``, final
    ``else`` branch) calls ``torch.cuda.set_device(local_rank)`` and uses the
    configured backend, usually ``nccl``. Without an accelerator we skip the
    device selection and use gloo; otherwise the original runs untouched.
    """
    if not _cpu_only() or init_backend != 'torch':
        return _orig_init_dist_pytorch(backend, init_backend=init_backend, **kwargs)
    if backend != 'gloo':
        _log(
            f'No GPU available: using the gloo backend instead of '
            f'"{backend}" for distributed training on CPU.'
        )
    # RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from torchrun (env://)
    torch.distributed.init_process_group(backend='gloo', **kwargs)


def _contains_sync_bn(model: torch.nn.Module) -> bool:
    """Whether ``model`` has torch or mmcv SyncBatchNorm layers."""
    types: Tuple[type, ...] = (torch.nn.SyncBatchNorm,)
    try:
        from mmcv.ops import SyncBatchNorm as MMCVSyncBatchNorm

        types += (MMCVSyncBatchNorm,)
    except ImportError:  # mmcv without ops
        pass
    return any(isinstance(m, types) for m in model.modules())


def _wrap_model_cpu(
    self, model_wrapper_cfg: Optional[dict], model: torch.nn.Module
) -> torch.nn.Module:
    """``Runner.wrap_model`` that builds a CPU DDP model when needed.

    mmengine 0.10.7 (mmengine/runner/runner.py, ``Runner.wrap_model``, the
    distributed branch) converts BN to SyncBN when ``cfg.sync_bn`` is set and
    always passes ``device_ids=[LOCAL_RANK]`` to DDP wrappers; both fail for
    CPU modules. In CPU distributed runs we keep/restore plain BN and give
    DDP ``device_ids=None``; in every other case the original method runs.
    """
    from mmengine.model import is_model_wrapper, revert_sync_batchnorm
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel

    if not self.distributed or is_model_wrapper(model) or not _cpu_only():
        return _orig_wrap_model(self, model_wrapper_cfg, model)

    model = model.to('cpu')
    if self.cfg.get('sync_bn', None) is not None:
        self.logger.warning(
            f'cfg.sync_bn={self.cfg.sync_bn!r} is ignored: SyncBatchNorm '
            'needs a GPU and does not run on CPU with gloo.'
        )
    if _contains_sync_bn(model):
        self.logger.warning(
            'CPU distributed training: SyncBatchNorm needs a GPU, so all '
            'SyncBatchNorm layers were converted to BatchNorm (statistics '
            'are computed per process).'
        )
        model = revert_sync_batchnorm(model)

    if model_wrapper_cfg is None:
        wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=self.cfg.get('find_unused_parameters', False),
        )
    else:
        wrapper_cfg = copy.copy(dict(model_wrapper_cfg))
        wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
    wrapper_type = wrapper_cfg['type']
    if isinstance(wrapper_type, str):
        wrapper_type = MODEL_WRAPPERS.get(wrapper_type)
    if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
        # CPU modules must not get device ids (DDP raises otherwise).
        wrapper_cfg['device_ids'] = None
    return MODEL_WRAPPERS.build(wrapper_cfg, default_args=dict(module=model))


def patch_cpu_distributed() -> bool:
    """Make mmengine's ``--launcher pytorch`` training work on CPU (gloo).

    On a machine without an accelerator this replaces, in memory only:

    * ``mmengine.dist.utils._init_dist_pytorch`` - skip
      ``torch.cuda.set_device`` and initialise the process group with gloo
      (whatever ``env_cfg.dist_cfg.backend`` says, e.g. ``nccl``);
    * ``mmengine.runner.Runner.wrap_model`` - for CPU distributed runs only,
      wrap with ``device_ids=None`` and revert SyncBN to BN (with a warning).

    Both replacements fall through to the originals outside that case. With a
    GPU (or NPU/MLU/MUSA) nothing is patched. Written against mmengine 0.10.7;
    the slurm and mpi launchers are not changed (they still need CUDA).
    Safe to call repeatedly.

    Returns:
        bool: True if the CPU patches are active.
    """
    global _orig_init_dist_pytorch, _orig_wrap_model
    if not _cpu_only():
        return False
    if _orig_wrap_model is not None:
        return True
    import mmengine.dist.utils as dist_utils
    from mmengine.runner import Runner

    # ``init_dist`` looks ``_init_dist_pytorch`` up in its module globals at
    # call time, so replacing the module attribute is enough.
    _orig_init_dist_pytorch = dist_utils._init_dist_pytorch
    dist_utils._init_dist_pytorch = _init_dist_pytorch_cpu
    _orig_wrap_model = Runner.wrap_model
    Runner.wrap_model = _wrap_model_cpu
    return True
