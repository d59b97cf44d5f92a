"""Train a model from an mmdet 3.x or mmseg 1.x config that uses mmdsnet.

The command line follows mmdet 3.3's ``tools/train.py``. The config's
``default_scope`` (``mmdet`` or ``mmseg``) decides which registries are used;
``import mmdsnet`` registers the DS-Net models in both.

Examples::

    python tools/train.py configs/xxx.py
    bash tools/dist_train.sh configs/xxx.py 8 --amp
"""
import argparse
import os
import os.path as osp
import sys

_REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _import_mmdsnet():
    """Import mmdsnet (registers its models), falling back to the repo copy."""
    try:
        import mmdsnet  # noqa: F401
    except ImportError:
        sys.path.insert(0, _REPO_ROOT)
        import mmdsnet  # noqa: F401


def parse_args(argv=None):
    """Parse the command line (mmdet 3.x train.py contract)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Train a detector / segmentor with mmdsnet')
    parser.add_argument('config', help='path of the training config')
    parser.add_argument(
        '--work-dir',
        help='where logs and checkpoints go (default: the config\'s '
        'work_dir, else ./work_dirs/<config name>)')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='automatic mixed precision (needs a GPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the LR by real batch size / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, resume from the '
        'latest checkpoint found in the work dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, as key=value pairs (e.g. '
        'train_dataloader.batch_size=4 or key="[a,b]"; no spaces)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='how the processes were started')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank (older); torchrun uses the LOCAL_RANK variable instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _has_amp_device() -> bool:
    from mmengine.device import get_device
    return get_device() != 'cpu'


def build_cfg(args):
    """Load the config and apply the command-line overrides."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir priority: command line > config > config file name
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    optim_wrapper = cfg.get('optim_wrapper', None)
    if args.amp:
        if not _has_amp_device():
            raise SystemExit('--amp needs a GPU: mixed precision training '
                             '(AmpOptimWrapper) is not supported on CPU.')
        if optim_wrapper is None:
            raise SystemExit('--amp: the config has no optim_wrapper.')
        if optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            optim_wrapper.type = 'AmpOptimWrapper'
            optim_wrapper.loss_scale = 'dynamic'
    elif (optim_wrapper is not None
          and optim_wrapper.get('type') == 'AmpOptimWrapper'
          and not _has_amp_device()):
        raise SystemExit('The config uses AmpOptimWrapper (mixed precision), '
                         'which needs a GPU; set optim_wrapper.type='
                         'OptimWrapper to train on CPU.')

    if args.auto_scale_lr:
        scale_cfg = cfg.get('auto_scale_lr', None)
        if not scale_cfg or 'base_batch_size' not in scale_cfg:
            raise SystemExit('--auto-scale-lr needs auto_scale_lr = dict('
                             'enable=False, base_batch_size=...) in the '
                             'config.')
        scale_cfg.enable = True

    # an explicit checkpoint wins over auto-resume from the work dir
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def build_runner(cfg):
    """Build the Runner (or ``cfg.runner_type``) under cfg.default_scope."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    if cfg.get('default_scope', None) == 'mmdet':
        try:  # same dynamo cache setting as mmdet's own tools
            from mmdet.utils import setup_cache_size_limit_of_dynamo
            setup_cache_size_limit_of_dynamo()
        except ImportError:
            pass
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None):
    args = parse_args(argv)
    _import_mmdsnet()
    from mmdsnet.utils.compat import (allow_runner_checkpoint_globals,
                                      patch_cpu_distributed)

    allow_runner_checkpoint_globals()  # resume / load_from on torch >= 2.6
    cfg = build_cfg(args)
    if args.launcher != 'none':
        patch_cpu_distributed()  # no-op on GPU machines
    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
