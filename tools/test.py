"""Evaluate a checkpoint with an mmdet 3.x, mmseg 1.x or mmpretrain 1.x config (mmdsnet).

The command line follows mmdet 3.3's ``tools/test.py``. Metrics come from the
config's ``test_evaluator`` (CocoMetric for mmdet, IoUMetric for mmseg,
Accuracy for mmpretrain).

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--show-dir DIR]
    bash tools/dist_test.sh CONFIG CHECKPOINT 8 [...]
"""

import argparse

# importing mmdsnet registers the models
from mmdsnet.cli import (
    add_common_args,
    build_runner,
    check_output_writable,
    config_from_args,
    explain_upstream_error,
)
from mmdsnet.engine import CheckpointMismatchError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model with mmdsnet')
    parser.add_argument('config', help='path of the test config')
    parser.add_argument('checkpoint', help='checkpoint to evaluate')
    parser.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    parser.add_argument('--show', action='store_true', help='display the predictions')
    parser.add_argument('--show-dir', help='save images with drawn predictions here')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='seconds each image is shown with --show'
    )
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation (needs tta_model and tta_pipeline)',
    )
    parser.add_argument(
        '--allow-partial-load',
        action='store_true',
        help='evaluate even if the checkpoint leaves some model weights '
        'unloaded or misshapen (they keep their initial values); without '
        'it such a checkpoint is refused',
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl or .pickle file')
    return args


def enable_visualization(cfg, args):
    """Turn on the config's visualization hook for --show / --show-dir."""
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise SystemExit(
            '--show/--show-dir need default_hooks.visualization in the config, '
            "e.g. dict(type='DetVisualizationHook')."
        )
    vis_hook = hooks['visualization']
    scope = cfg.get('default_scope', None)
    # mmpretrain's VisualizationHook is switched by `enable` (other keywords go to
    # its visualizer); mmdet's and mmseg's hooks by `draw`.
    vis_hook['enable' if scope == 'mmpretrain' else 'draw'] = True
    if args.show:
        vis_hook['show'] = True
        vis_hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmdet':
            vis_hook['test_out_dir'] = args.show_dir  # under <work_dir>/<timestamp>/
        elif scope == 'mmpretrain':
            vis_hook['out_dir'] = args.show_dir  # <image name>_0.png, as given
        elif cfg.get('visualizer', None) is None:
            raise SystemExit('--show-dir needs a visualizer in the config.')
        else:
            cfg.visualizer['save_dir'] = args.show_dir  # SegVisualizationHook draws there


def enable_tta(cfg):
    """Wrap the model with cfg.tta_model and use cfg.tta_pipeline."""
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise SystemExit('--tta needs both tta_model and tta_pipeline in the config.')
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers keep the real one inside
        dataset = dataset['dataset']
    dataset.pipeline = cfg.tta_pipeline
    cfg.model = dict(cfg.tta_model, module=cfg.model)


def dump_metric(cfg, out_file):
    """A metric that pickles the raw predictions to ``out_file``."""
    if cfg.get('default_scope', None) == 'mmdet':
        from mmdet.evaluation import DumpDetResults  # drops GT, masks as RLE

        return DumpDetResults(out_file_path=out_file)
    from mmengine.evaluator import DumpResults

    return DumpResults(out_file_path=out_file)


def main(argv=None):
    args = parse_args(argv)
    if args.out is not None:
        check_output_writable(args.out)  # the dump comes after the whole evaluation
    cfg = config_from_args(args)
    cfg.load_from = args.checkpoint
    # Refuse (or, with --allow-partial-load, report) a checkpoint that leaves
    # model weights unloaded or misshapen: it would score a random model.
    cfg.custom_hooks = [
        *cfg.get('custom_hooks', []),
        dict(type='CheckpointFitHook', allow_partial=args.allow_partial_load),
    ]
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.tta:
        enable_tta(cfg)
    try:
        runner = build_runner(cfg)
        if args.out is not None:
            runner.test_evaluator.metrics.append(dump_metric(cfg, args.out))
        runner.test()
    except CheckpointMismatchError as error:
        raise SystemExit(f'tools/test.py: {error}') from error
    except ValueError as error:
        explained = explain_upstream_error(error)
        if explained is None:
            raise
        raise SystemExit(f'tools/test.py: {explained}') from error


if __name__ == '__main__':
    main()
