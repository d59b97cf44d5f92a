"""Evaluate a checkpoint with an mmdet 3.x or mmseg 1.x config (mmdsnet).

The command line follows mmdet 3.3's ``tools/test.py``. Metrics come from the
config's ``test_evaluator`` (e.g. CocoMetric for mmdet, IoUMetric for mmseg).

Examples::

    python tools/test.py configs/xxx.py work_dirs/xxx/epoch_12.pth
    bash tools/dist_test.sh configs/xxx.py epoch_12.pth 8 --out res.pkl
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
    """Parse the command line (mmdet 3.x test.py contract)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a model with mmdsnet')
    parser.add_argument('config', help='path of the test config')
    parser.add_argument('checkpoint', help='checkpoint to evaluate')
    parser.add_argument(
        '--work-dir',
        help='where the metrics file goes (default: the config\'s work_dir, '
        'else ./work_dirs/<config name>)')
    parser.add_argument(
        '--out',
        type=str,
        help='also dump the raw predictions to this .pkl file')
    parser.add_argument(
        '--show', action='store_true', help='display the predictions')
    parser.add_argument(
        '--show-dir', help='save images with drawn predictions here')
    parser.add_argument(
        '--wait-time', type=float, default=2,
        help='seconds each image is shown with --show')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, as key=value pairs (e.g. '
        'test_dataloader.batch_size=2 or key="[a,b]"; no spaces)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='how the processes were started')
    parser.add_argument(
        '--tta', action='store_true',
        help='test-time augmentation (needs tta_model and tta_pipeline in '
        'the config)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl or .pickle file')
    return args


def enable_visualization(cfg, args):
    """Turn on the config's visualization hook for --show / --show-dir."""
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise SystemExit('--show/--show-dir need default_hooks.visualization '
                         "in the config, e.g. dict(type='"
                         "DetVisualizationHook').")
    vis_hook = hooks['visualization']
    vis_hook['draw'] = True
    if args.show:
        vis_hook['show'] = True
        vis_hook['wait_time'] = args.wait_time
    if args.show_dir:
        if cfg.get('default_scope', None) == 'mmdet':
            # DetVisualizationHook writes to <work_dir>/<timestamp>/show_dir
            vis_hook['test_out_dir'] = args.show_dir
        else:
            # SegVisualizationHook draws through the visualizer's save_dir
            if cfg.get('visualizer', None) is None:
                raise SystemExit('--show-dir needs a visualizer in the '
                                 'config.')
            cfg.visualizer['save_dir'] = args.show_dir


def enable_tta(cfg):
    """Wrap the model with cfg.tta_model and use cfg.tta_pipeline."""
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise SystemExit('--tta needs both tta_model and tta_pipeline in the '
                         'config.')
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers keep the real one inside
        dataset = dataset['dataset']
    dataset.pipeline = cfg.tta_pipeline
    tta_model = dict(cfg.tta_model)
    tta_model['module'] = cfg.model
    cfg.model = tta_model


def build_cfg(args):
    """Load the config and apply the command-line overrides."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.tta:
        enable_tta(cfg)
    return cfg


def dump_metric(cfg, out_file):
    """Metric object that pickles the raw predictions to ``out_file``."""
    if cfg.get('default_scope', None) == 'mmdet':
        # drops ground truth and stores instance masks as RLE
        from mmdet.evaluation import DumpDetResults
        return DumpDetResults(out_file_path=out_file)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out_file)


def main(argv=None):
    args = parse_args(argv)
    _import_mmdsnet()
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmdsnet.utils.compat import (allow_runner_checkpoint_globals,
                                      patch_cpu_distributed)

    allow_runner_checkpoint_globals()  # load_from on torch >= 2.6
    cfg = build_cfg(args)
    if args.launcher != 'none':
        patch_cpu_distributed()  # no-op on GPU machines
    if cfg.get('default_scope', None) == 'mmdet':
        try:
            from mmdet.utils import setup_cache_size_limit_of_dynamo
            setup_cache_size_limit_of_dynamo()
        except ImportError:
            pass
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else \
        Runner.from_cfg(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(dump_metric(cfg, args.out))
    runner.test()


if __name__ == '__main__':
    main()
