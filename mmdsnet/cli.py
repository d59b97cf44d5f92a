"""Command-line glue shared by tools/train.py and tools/test.py.

The options common to mmdet 3.3's tools, reading the config with those
options applied, and building the Runner with the CPU-distributed fix.
"""

import argparse
import atexit
import os
import os.path as osp

from mmengine.config import Config, DictAction

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
    return cfg


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
    from .engine import lock_work_dir, remove_interrupted_saves

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
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def build_runner(cfg: Config):
    """Build ``cfg.runner_type`` or mmengine's Runner under the config's scope.

    Multi-process launches first get :func:`patch_cpu_distributed` (gloo and
    CPU DDP when there is no GPU; a no-op otherwise) and close the process
    group at exit (:func:`destroy_process_group_at_exit`). The stock
    ``CheckpointHook`` becomes :class:`~mmdsnet.engine.AtomicCheckpointHook`, so
    a kill during a save always leaves a complete checkpoint to resume from.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from .engine import use_atomic_checkpoint_hook
    from .utils.compat import allow_runner_checkpoint_globals, patch_cpu_distributed

    allow_runner_checkpoint_globals()  # resume / load_from on torch >= 2.6
    use_atomic_checkpoint_hook(cfg)
    if cfg.get('launcher', 'none') != 'none':
        patch_cpu_distributed()
        atexit.register(destroy_process_group_at_exit)
    if cfg.get('default_scope', None) == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo

        setup_cache_size_limit_of_dynamo()
    return RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
