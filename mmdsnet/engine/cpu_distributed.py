"""mmengine's ``--launcher pytorch`` training on machines without a GPU.

mmengine 0.10.7's distributed path assumes CUDA (``torch.cuda.set_device``,
NCCL, DDP ``device_ids``). :func:`patch_cpu_distributed` makes it use gloo
and plain CPU DDP so that ``tools/dist_train.sh`` works unchanged on CPU;
with an accelerator nothing is patched.
"""

import copy
import logging
from typing import Any, Callable, Optional, Tuple

import mmengine.dist.utils as dist_utils
import torch
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from torch.nn.parallel import DistributedDataParallel

_orig_init_dist_pytorch: Optional[Callable] = None
_orig_wrap_model: Optional[Callable] = None


def _cpu_only() -> bool:
    """True when mmengine would place the model on the CPU."""
    return get_device() == 'cpu'


def _log(msg: str, logger: Any = 'current') -> None:
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
    # ``init_dist`` looks ``_init_dist_pytorch`` up in its module globals at
    # call time, so replacing the module attribute is enough.
    _orig_init_dist_pytorch = dist_utils._init_dist_pytorch
    dist_utils._init_dist_pytorch = _init_dist_pytorch_cpu
    _orig_wrap_model = Runner.wrap_model
    Runner.wrap_model = _wrap_model_cpu
    return True
