"""Train a model from an mmdet 3.x, mmseg 1.x or mmpretrain 1.x config that uses mmdsnet.

The command line follows mmdet 3.3's ``tools/train.py``. The config's
``default_scope`` (``mmdet``, ``mmseg`` or ``mmpretrain``) decides which
registries are used; ``import mmdsnet`` registers the DS-Net models in each.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
    bash tools/dist_train.sh CONFIG 8 [...]
"""

import argparse

# importing mmdsnet registers the models
from mmdsnet.cli import (
    add_common_args,
    build_runner,
    claim_work_dir,
    config_from_args,
    explain_upstream_error,
)
from mmdsnet.engine import (
    CheckpointMismatchError,
    CheckpointSaveError,
    WorkDirBusyError,
    WorkDirLockError,
    release_work_dir,
    use_epoch_seed_hook,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector / segmentor with mmdsnet')
    parser.add_argument('config', help='path of the training config')
    parser.add_argument('--amp', action='store_true', help='mixed precision (needs a GPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by real batch size / auto_scale_lr.base_batch_size',
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, from the latest '
        'checkpoint in the work dir',
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def has_amp_device() -> bool:
    from mmengine.device import get_device

    return get_device() != 'cpu'


def apply_train_options(cfg, args):
    """--amp, --auto-scale-lr and --resume, with clear errors."""
    optim_wrapper = cfg.get('optim_wrapper', None)
    uses_amp = args.amp or (optim_wrapper or {}).get('type') == 'AmpOptimWrapper'
    if uses_amp and not has_amp_device():
        raise SystemExit(
            "--amp / AmpOptimWrapper needs a GPU: mmengine's mixed precision "
            'is not supported on CPU (set optim_wrapper.type=OptimWrapper).'
        )
    if args.amp:
        if optim_wrapper is None:
            raise SystemExit('--amp: the config has no optim_wrapper.')
        if optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            optim_wrapper.type = 'AmpOptimWrapper'
            optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        scale_cfg = cfg.get('auto_scale_lr', None)
        if not scale_cfg or 'base_batch_size' not in scale_cfg:
            raise SystemExit(
                '--auto-scale-lr needs auto_scale_lr = dict(enable=False, '
                'base_batch_size=...) in the config.'
            )
        scale_cfg.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if cfg.get('resume', False):
        # Resuming must restore every weight: refuse a checkpoint of another model.
        cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='CheckpointFitHook')]


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    apply_train_options(cfg, args)
    # Random state from (seed, epoch): a resumed run repeats the uninterrupted one.
    use_epoch_seed_hook(cfg)
    try:
        # One live run per work dir (a lock), interrupted saves removed first.
        claim_work_dir(cfg)
        build_runner(cfg).train()
    except (
        CheckpointMismatchError,
        CheckpointSaveError,
        WorkDirBusyError,
        WorkDirLockError,
    ) as error:
        raise SystemExit(f'tools/train.py: {error}') from error
    except ValueError as error:
        explained = explain_upstream_error(error)
        if explained is None:
            raise
        raise SystemExit(f'tools/train.py: {explained}') from error
    finally:
        release_work_dir(cfg.work_dir)


if __name__ == '__main__':
    main()
