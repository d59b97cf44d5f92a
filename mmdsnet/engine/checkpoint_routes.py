"""mmengine's routes into checkpoints, made weights-only and kept to safe files.

* :func:`allow_runner_checkpoint_globals` - mmengine's loaders for local
  paths and http(s) URLs (resume, ``load_from``, ``tools/test.py``,
  inferencers, ``Pretrained`` init of other modules) become
  :func:`~mmdsnet.checkpoint.torch_load_weights_only`, which allows the types
  of Runner checkpoints for each load on torch >= 2.6, instead of turning
  ``weights_only`` off or widening ``torch.load`` for the whole process.
* :func:`guard_checkpoint_routes` - the routes around those loaders that run
  code or load the wrong file: an inferencer building its model from the
  config stored in a checkpoint, and auto-resume following a
  ``last_checkpoint`` that points outside the work dir.

``import mmdsnet`` installs both; each is idempotent.
"""

import os
import os.path as osp
from typing import Callable, Mapping, Optional

import mmengine.runner.checkpoint as mmengine_checkpoint
import mmengine.runner.runner as runner_module
from mmengine.infer.infer import BaseInferencer

from ..checkpoint import download_checkpoint, naming_the_download, torch_load_weights_only

_checkpoint_globals_allowed = False


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


def load_from_http_weights_only(filename: str, map_location=None, **_) -> Mapping:
    """mmengine's http(s) loader, but weights-only like local files.

    mmengine's ``load_from_http`` unpickles the download in full (code in the
    file runs). Here the file is downloaded once into the same cache and
    loaded with :func:`~mmdsnet.checkpoint.torch_load_weights_only`, now and
    on every later load.
    """
    path = download_checkpoint(filename)
    with naming_the_download(filename, path):
        return torch_load_weights_only(path, map_location)


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
    _orig_init_model = BaseInferencer._init_model
    BaseInferencer._init_model = _init_model_without_stored_config
    _orig_find_latest = runner_module.find_latest_checkpoint
    runner_module.find_latest_checkpoint = _find_latest_checkpoint_in_work_dir
    try:
        import mmengine.runner._flexible_runner as flexible_module

        flexible_module.find_latest_checkpoint = _find_latest_checkpoint_in_work_dir
    except ImportError:  # pragma: no cover - older mmengine
        pass
