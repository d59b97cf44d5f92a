"""Compatibility shims for running mmengine 0.10.x on current PyTorch.

Three problems are handled here, each by one idempotent function:

* :func:`allow_runner_checkpoint_globals` - since torch 2.6, ``torch.load``
  defaults to ``weights_only=True``. Checkpoints written by mmengine's
  ``Runner`` carry a pickled ``MessageHub`` (``HistoryBuffer`` objects holding
  numpy arrays, numpy scalars such as ``eta``/``best_score``), so resume,
  ``load_from`` and ``tools/test.py`` fail with ``Unsupported global``. We
  allow exactly the types such checkpoints contain, inside mmengine's local
  and http(s) checkpoint loaders only, instead of turning ``weights_only``
  off or widening ``torch.load`` for the whole process.
* :func:`guard_checkpoint_routes` - the routes around those loaders that run
  code or load the wrong file: an inferencer building its model from the
  config stored in a checkpoint, and auto-resume following a
  ``last_checkpoint`` that points outside the work dir.
* :func:`patch_cpu_distributed` - mmengine 0.10.7's ``--launcher pytorch``
  path assumes CUDA. On CPU-only machines we make it use gloo and plain CPU
  DDP so that ``tools/dist_train.sh`` works unchanged.
"""

import contextlib
import copy
import logging
import os
import os.path as osp
import pickle
import stat
import zipfile
from typing import Any, Callable, List, Mapping, Optional, Tuple

import torch
from mmengine.logging import HistoryBuffer

__all__ = [
    'allow_runner_checkpoint_globals',
    'check_checkpoint_file',
    'download_checkpoint',
    'guard_checkpoint_routes',
    'is_url',
    'torch_load_weights_only',
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
    if obj in (HistoryBuffer, _LoadedHistoryBuffer) and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    import pickle

    raise pickle.UnpicklingError(
        f'weights_only load: getattr({obj!r}, {name!r}) is not allowed; '
        'mmdsnet only permits HistoryBuffer statistics methods '
        f'{sorted(_HISTORY_BUFFER_METHODS)}.'
    )


#: The instance attributes a pickled ``HistoryBuffer`` has (``__getstate__``
#: adds ``statistics_methods``).
_HISTORY_BUFFER_STATE = frozenset(
    ('max_length', '_log_history', '_count_history', 'statistics_methods')
)


class _LoadedHistoryBuffer(HistoryBuffer):
    """What the unpickler builds for a pickled ``HistoryBuffer``.

    mmengine's own ``__setstate__`` copies the pickled ``statistics_methods``
    into the dict shared by every ``HistoryBuffer`` of the process, so a
    checkpoint could make ``mean`` return the maximum for all later logging.
    Here the state may hold only the instance attributes mmengine writes and
    each statistics name must map to the method of the same name; the shared
    dict is not touched, and the object becomes a plain ``HistoryBuffer``.
    """

    def __setstate__(self, state: Any) -> None:
        cls = HistoryBuffer
        if not isinstance(state, dict) or not set(state) <= _HISTORY_BUFFER_STATE:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise pickle.UnpicklingError(
                f'weights_only load: a HistoryBuffer with state {keys} is not accepted; '
                f'only the attributes {sorted(_HISTORY_BUFFER_STATE)} are'
            )
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict) or any(
            getattr(cls, str(name), None) is not method for name, method in methods.items()
        ):
            raise pickle.UnpicklingError(
                'weights_only load: a HistoryBuffer whose statistics_methods map a name to '
                f'another method ({methods!r}) is refused; only '
                f"{{'min': HistoryBuffer.min, ...}} as mmengine saves them is accepted"
            )
        self.__class__ = cls
        self._set_default_statistics()  # the standard entries, as mmengine's own does
        self.__dict__.update({k: v for k, v in state.items() if k != 'statistics_methods'})


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
    plain, aliases = _numpy_safe_globals()
    # The pickled name of HistoryBuffer builds a _LoadedHistoryBuffer, which
    # checks the state and leaves the class-wide statistics table alone.
    buffer_alias = (_LoadedHistoryBuffer, f'{HistoryBuffer.__module__}.HistoryBuffer')
    return [buffer_alias] + plain + aliases + [(_history_buffer_getattr, 'builtins.getattr')]


#: First bytes of what torch.load and the .pdparams reader accept: a zip
#: archive (torch.save since 1.6) or a pickle of protocol 2 or later.
_CHECKPOINT_MAGIC = (b'PK\x03\x04', b'\x80')


def check_checkpoint_file(path: str) -> None:
    """Refuse a path that is not a readable, non-empty checkpoint file, saying which.

    Runs before anything is read, so a FIFO or a device such as ``/dev/zero``
    is named as such instead of blocking or filling memory, and a text file
    is refused instead of failing deep inside the unpickler.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint not found: {path}') from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(
            f'{path} is a directory; a checkpoint file (.pth or .pdparams) is expected'
        )
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f'{path} is not a regular file (a FIFO, device or socket); a checkpoint file '
            '(.pth or .pdparams) is expected'
        )
    if info.st_size == 0:
        raise RuntimeError(
            f'checkpoint {path} is empty (0 bytes): an interrupted '
            'download or save? Fetch or convert it again.'
        )
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head.startswith(_CHECKPOINT_MAGIC):
        raise ValueError(
            f'{path} is not a checkpoint: it starts with {head!r}, not with a zip archive '
            '(torch.save) or a pickle (.pdparams, legacy torch.save). A text or HTML file?'
        )


def torch_load_weights_only(path: str, map_location=None) -> Mapping:
    """``torch.load(weights_only=True)`` of a local file with the Runner types allowed.

    The file is checked first (:func:`check_checkpoint_file`); a refused or
    unreadable file gets an error that names it, and so does a file whose
    content is not a dict (the only form mmengine and our loaders use).
    """
    check_checkpoint_file(path)
    allowed = runner_checkpoint_globals()
    scope = torch.serialization.safe_globals(allowed) if allowed else contextlib.nullcontext()
    try:
        with scope:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f'checkpoint {path} refused: {err}') from err
    except (RuntimeError, EOFError) as err:
        if not zipfile.is_zipfile(path):
            raise RuntimeError(
                f'checkpoint {path} is incomplete or not a torch checkpoint '
                f'({osp.getsize(path)} bytes, no zip directory; an interrupted save?): '
                f'{err}'
            ) from err
        raise RuntimeError(f'checkpoint {path} could not be read: {err}') from err
    except Exception as err:  # KeyError, IndexError, ValueError from torch internals
        raise RuntimeError(
            f'checkpoint {path} could not be read ({type(err).__name__}: {err}); a file '
            'written by torch.save (a Runner checkpoint or a state dict) is expected'
        ) from err
    check_is_mapping(checkpoint, path)
    return checkpoint


def check_is_mapping(checkpoint: Any, path: str) -> None:
    """Refuse checkpoint contents that are not a dict, naming the file."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f'checkpoint {path} holds a {type(checkpoint).__name__}, not a dict; a state '
            "dict or a Runner checkpoint ({'state_dict': ..., 'meta': ...}) is expected"
        )


def load_from_local_weights_only(filename: str, map_location=None) -> Mapping:
    """mmengine's local checkpoint loader, weights-only with the Runner types allowed.

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
    return torch_load_weights_only(osp.expanduser(filename), map_location)


def is_url(path: Any) -> bool:
    """Whether ``path`` is an http(s) URL."""
    return isinstance(path, str) and path.startswith(('http://', 'https://'))


def download_checkpoint(url: str) -> str:
    """Download ``url`` once into torch hub's checkpoint cache; return the local path.

    The same cache as ``torch.hub.load_state_dict_from_url``
    (``$TORCH_HOME/hub/checkpoints``), but nothing is unpickled here: the
    caller loads the file weights-only. In distributed runs rank 0 downloads
    first and the others reuse its file (or fetch their own on another node).
    """
    from urllib.parse import urlparse

    from mmengine.dist import barrier, get_dist_info

    name = osp.basename(urlparse(url).path)
    if not name:
        raise ValueError(
            f'checkpoint URL {url} names no file; a URL ending in a file name is expected'
        )
    model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, name)
    rank, world_size = get_dist_info()
    for turn in (0, 1):
        if (rank == 0) == (turn == 0) and not osp.exists(cached):
            os.makedirs(model_dir, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, cached, progress=False)
            except OSError as err:  # URLError, HTTPError: say which URL
                raise OSError(f'could not download checkpoint {url}: {err}') from err
        if world_size > 1 and turn == 0:
            barrier()
    return cached


def load_from_http_weights_only(filename: str, map_location=None, **_) -> Mapping:
    """mmengine's http(s) loader, but weights-only like local files.

    mmengine's ``load_from_http`` unpickles the download in full (code in the
    file runs). Here the file is downloaded once into the cache and loaded
    with :func:`torch_load_weights_only`, now and on every later load.
    """
    return torch_load_weights_only(download_checkpoint(filename), map_location)


def allow_runner_checkpoint_globals() -> bool:
    """Let mmengine load Runner checkpoints on torch >= 2.6, and nothing else.

    Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, and the
    ``MessageHub`` that mmengine pickles into every Runner checkpoint (resume,
    ``load_from``, ``tools/test.py``, inferencers) is refused. This registers
    :func:`load_from_local_weights_only` as mmengine's loader for local paths
    and :func:`load_from_http_weights_only` for http(s) URLs (also behind
    ``torchvision://``, ``open-mmlab://`` and ``mmcls://``), which allow
    exactly those types for the duration of each load. Safe to call
    repeatedly.

    Returns:
        bool: True once the loaders are registered.
    """
    global _checkpoint_globals_allowed
    if _checkpoint_globals_allowed:
        return True
    import mmengine.runner.checkpoint as mmengine_checkpoint

    loader = mmengine_checkpoint.CheckpointLoader
    loader.register_scheme(prefixes='', loader=load_from_local_weights_only, force=True)
    loader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http_weights_only, force=True
    )
    # torchvision://, open-mmlab:// and mmcls:// resolve to a URL and call the
    # module's load_from_http by name: they get the weights-only one too.
    mmengine_checkpoint.load_from_http = load_from_http_weights_only
    _checkpoint_globals_allowed = True
    return True


#: Set to 1 to let an inferencer run the config stored in a trusted checkpoint.
TRUST_CONFIG_ENV = 'MMDSNET_TRUST_CHECKPOINT_CONFIG'

_orig_init_model: Optional[Callable] = None
_orig_find_latest: Optional[Callable] = None


def _init_model_without_stored_config(self, cfg, weights, device='cpu'):
    """``BaseInferencer._init_model`` that does not run a checkpoint's stored config.

    Without ``model=``, mmengine builds the model from the config text saved
    in the checkpoint (``message_hub`` or ``meta``) with ``Config.fromstring``,
    which executes it as Python. That is refused unless the environment
    variable ``MMDSNET_TRUST_CHECKPOINT_CONFIG=1`` says the file is trusted.
    """
    if not cfg and weights is not None and os.environ.get(TRUST_CONFIG_ENV) != '1':
        raise ValueError(
            f'{type(self).__name__}(weights={weights!r}) without model= would build the '
            'model from the config stored in the checkpoint, which runs as Python code: '
            'refused. Pass model=CONFIG (the config file the checkpoint was trained with), '
            f'or, only for a checkpoint you trust, set {TRUST_CONFIG_ENV}=1.'
        )
    return _orig_init_model(self, cfg, weights, device)


def _find_latest_checkpoint_in_work_dir(path: str) -> Optional[str]:
    """mmengine's ``find_latest_checkpoint`` that only resumes inside the work dir.

    ``last_checkpoint`` is a plain text file; one naming a URL or a file
    outside the work dir (copied in, or written by someone else) would make
    auto-resume load something the run never saved. Both are refused.
    """
    found = _orig_find_latest(path)
    if not found:
        return found
    save_file = osp.join(path, 'last_checkpoint')
    if '://' in found:
        raise ValueError(
            f'{save_file} names {found!r}, a URL: auto-resume only resumes from a '
            f'checkpoint that this run saved inside its work dir {path}. Pass the '
            'checkpoint to --resume explicitly if you mean it.'
        )
    work_dir = osp.realpath(path)
    if osp.commonpath([work_dir, osp.realpath(found)]) != work_dir:
        raise ValueError(
            f'{save_file} names {found!r}, which is outside the work dir {path}: '
            'auto-resume only resumes from a checkpoint saved inside the work dir. Pass '
            'the checkpoint to --resume explicitly if you mean it.'
        )
    return found


def guard_checkpoint_routes() -> None:
    """Close the checkpoint routes that run code or load the wrong file.

    Installs, once: the inferencers' refusal of a checkpoint's stored config
    (:func:`_init_model_without_stored_config`) and the auto-resume check of
    ``last_checkpoint`` (:func:`_find_latest_checkpoint_in_work_dir`).
    """
    global _orig_init_model, _orig_find_latest
    if _orig_init_model is not None:
        return
    import mmengine.runner.runner as runner_module
    from mmengine.infer.infer import BaseInferencer

    _orig_init_model = BaseInferencer._init_model
    BaseInferencer._init_model = _init_model_without_stored_config
    _orig_find_latest = runner_module.find_latest_checkpoint
    runner_module.find_latest_checkpoint = _find_latest_checkpoint_in_work_dir
    try:
        import mmengine.runner._flexible_runner as flexible_module

        flexible_module.find_latest_checkpoint = _find_latest_checkpoint_in_work_dir
    except ImportError:  # pragma: no cover - older mmengine
        pass


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
