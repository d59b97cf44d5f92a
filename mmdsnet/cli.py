"""Command-line glue shared by tools/train.py and tools/test.py.

The options common to mmdet 3.3's tools, reading the config with those
options applied, and building the Runner with the CPU-distributed fix.
"""

import argparse
import atexit
import difflib
import functools
import gc
import inspect
import os
import os.path as osp
import warnings
from typing import Optional

import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .checkpoint import remove_interrupted_saves
from .engine import lock_work_dir, patch_cpu_distributed, use_atomic_checkpoint_hook
from .utils.config import resolve_config_path


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--work-dir, --cfg-options, --launcher and --local_rank/--local-rank."""
    parser.add_argument(
        '--work-dir',
        help="where logs, checkpoints and metrics go (default: the config's "
        'work_dir, else ./work_dirs/<config name>)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, as key=value pairs (e.g. '
        'train_dataloader.batch_size=4 or key="[a,b]"; no spaces)',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='how the processes were started',
    )
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank (older); torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by ``args.config`` with --cfg-options, --launcher and
    --work-dir applied (``args`` from a parser given :func:`add_common_args`)."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(resolve_config_path(args.config))
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    warn_near_miss_keys(cfg)
    return cfg


# Top-level config keys that mmdet/mmseg configs and their tools read, besides
# the Runner's own arguments (read from its signature).
COMMON_CONFIG_KEYS = (
    '_base_',
    'custom_imports',
    'runner_type',
    'backend_args',
    'file_client_args',
    'dataset_type',
    'data_root',
    'metainfo',
    'train_pipeline',
    'test_pipeline',
    'tta_model',
    'tta_pipeline',
    'vis_backends',
    'img_scale',
    'img_scales',
    'image_scale',
    'img_ratios',
    'crop_size',
    'classes',
    'palette',
    'optimizer',
    'pretrained',
    'checkpoint',
    'dsnet_backbone',
    'model_wrapper_cfg',
    'train_dataset',
    'val_dataset',
    'test_dataset',
    'norm_cfg',
    'num_classes',
    'max_epochs',
    'max_iters',
    'base_lr',
    'work_dir',
)


def known_config_keys() -> set:
    """The Runner's config keys plus :data:`COMMON_CONFIG_KEYS`."""
    runner_keys = set(inspect.signature(Runner.__init__).parameters) - {'self', 'cfg'}
    return runner_keys | set(COMMON_CONFIG_KEYS)


def warn_near_miss_keys(cfg: Config) -> list:
    """Warn about top-level keys that look like a misspelt known key.

    The Runner ignores unknown keys, so ``load_frm=...`` silently trains from
    scratch. Only near misses are reported (a config may define its own
    variables); returns the ``(key, suggestion)`` pairs warned about.
    """
    known = known_config_keys()
    pairs = []
    for key in cfg.keys():
        if key in known or key.startswith('_'):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            pairs.append((key, close[0]))
            warnings.warn(
                f'config key {key!r} is not one the Runner or mmdet/mmseg read and is ignored; '
                f'did you mean {close[0]!r}?',
                UserWarning,
                stacklevel=2,
            )
    return pairs


def check_output_writable(path: str, option: str = '--out') -> None:
    """Fail now, not after a whole evaluation, when ``path`` cannot be written.

    mmengine creates missing directories when it writes the file, so those
    must only be creatable: the nearest existing ancestor must be a writable
    directory. An existing directory is tested by opening the file for
    appending (which creates it, and is removed again if it did not exist), so
    a read-only directory, a directory at that path, a file where a directory
    should be, or a missing permission are all reported before the run.
    """
    parent = osp.dirname(osp.abspath(path))
    ancestor = parent
    while not osp.lexists(ancestor):
        ancestor = osp.dirname(ancestor)
    if ancestor != parent:
        if not osp.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
            what = 'not a directory' if not osp.isdir(ancestor) else 'not writable'
            raise SystemExit(
                f'{option} {path}: cannot be written ({ancestor} is {what}, so the missing '
                'directories cannot be created); give a path in a writable directory'
            )
        return
    existed = osp.exists(path)
    try:
        with open(path, 'ab'):
            pass
    except OSError as error:
        raise SystemExit(
            f'{option} {path}: cannot be written ({error.strerror or error}); give a '
            'path in an existing, writable directory'
        ) from error
    if not existed:
        os.remove(path)


def explain_upstream_error(error: BaseException) -> Optional[str]:
    """A clear message for an upstream error whose own text says nothing
    useful, or None. Known: an empty dataset, which mmengine's ``BaseDataset``
    reports as numpy's 'need at least one array to concatenate'."""
    if not isinstance(error, ValueError) or 'need at least one array to concatenate' not in str(
        error
    ):
        return None
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == '_serialize_data' and 'self' in frame.f_locals:
            dataset = frame.f_locals['self']
            return (
                f'the dataset {type(dataset).__name__} has no samples (ann_file='
                f'{getattr(dataset, "ann_file", None)!r}, data_root='
                f'{getattr(dataset, "data_root", None)!r}, data_prefix='
                f'{getattr(dataset, "data_prefix", None)!r}); mmengine reports this as '
                f'"{error}". Check those paths, and filter_cfg (filter_empty_gt drops '
                'images without annotations).'
            )
        traceback = traceback.tb_next
    return None


def launch_rank(cfg: Config) -> int:
    """This process's global rank as its launcher reports it, before any
    process group exists (0 for a single-process run)."""
    if cfg.get('launcher', 'none') == 'none':
        return 0
    for name in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK'):
        if os.environ.get(name, '').isdigit():
            return int(os.environ[name])
    return 0


def claim_work_dir(cfg: Config) -> None:
    """Before a training Runner is built: take the work dir's run lock, then
    delete what interrupted saves left there.

    The lock refuses a second live run in the same work dir
    (:class:`~mmdsnet.engine.WorkDirBusyError`), so the clean-up never
    removes a live run's save in progress; a killed run's lock goes with its
    process. Cleaning before the Runner exists frees the space of a partial
    checkpoint before the Runner writes its config and logs (a full disk
    otherwise stops ``--resume`` there). Rank 0 alone does both in a
    multi-process launch.
    """
    if launch_rank(cfg) != 0:
        return
    lock_work_dir(cfg.work_dir)
    remove_interrupted_saves(cfg.work_dir, logger=None)


def destroy_process_group_at_exit() -> None:
    """Free the finished Runner's DDP model, then destroy the default process
    group, while Python is still alive.

    The Runner never destroys the group, and it and its DDP-wrapped model sit
    in reference cycles until interpreter shutdown. Torn down there, the DDP
    reducer and gloo's worker threads can abort a finished process ('terminate
    called without an active exception', SIGABRT), failing a complete
    multi-process CPU run. Destroying the group alone does not prevent it; the
    model has to go first (``gc.collect()``).
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def name_unreadable_images() -> None:
    """Make mmcv's ``LoadImageFromFile`` name the image it cannot read (once).

    mmcv re-raises a decoding failure as it comes: a 0-byte or truncated
    training image stops the run with a bare OpenCV assertion
    (``!buf.empty()``) that does not say which of thousands of files it was.
    ``ignore_empty=True`` keeps mmcv's own behaviour (the sample is skipped).
    """
    from mmcv.transforms import LoadImageFromFile

    original = LoadImageFromFile.transform
    if getattr(original, 'names_the_image', False):
        return

    @functools.wraps(original)
    def transform(self, results):
        try:
            return original(self, results)
        except Exception as error:
            path = results.get('img_path')
            raise RuntimeError(
                f'image {path} could not be read ({type(error).__name__}: '
                f'{str(error).strip()}); an empty (0-byte) or corrupt file? Replace it or '
                'remove it from the annotations'
            ) from error

    transform.names_the_image = True
    LoadImageFromFile.transform = transform


def build_runner(cfg: Config):
    """Build ``cfg.runner_type`` or mmengine's Runner under the config's scope.

    Multi-process launches first get :func:`patch_cpu_distributed` (gloo and
    CPU DDP when there is no GPU; a no-op otherwise) and close the process
    group at exit (:func:`destroy_process_group_at_exit`). The stock
    ``CheckpointHook`` becomes :class:`~mmdsnet.engine.AtomicCheckpointHook`, so
    a kill during a save always leaves a complete checkpoint to resume from.
    An image the data pipeline cannot read is named (:func:`name_unreadable_images`).
    """
    use_atomic_checkpoint_hook(cfg)
    name_unreadable_images()
    if cfg.get('launcher', 'none') != 'none':
        patch_cpu_distributed()
        atexit.register(destroy_process_group_at_exit)
    if cfg.get('default_scope', None) == 'mmdet':
        # mmdet is optional (an mmseg-only install): imported only for its configs.
        from mmdet.utils import setup_cache_size_limit_of_dynamo

        setup_cache_size_limit_of_dynamo()
    return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
