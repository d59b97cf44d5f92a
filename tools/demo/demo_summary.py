"""Summarise a demo run: draw its training curves, print the figures and where
everything is.

    python tools/demo/demo_summary.py WORK_DIR --task det --pred-dir WORK_DIR/pictures/predictions

(``--task seg`` or ``cls`` for the other demos.)

Reads mmengine's ``scalars.json`` of the training run (every logged loss term
and learning rate per iteration, the validation metrics per evaluation) and
draws them with matplotlib into ``WORK_DIR/pictures/training_curves.png``;
reads the metrics of the tools/test.py run, and prints the loss at the start
and end of training, the test metrics, the time, and the paths of the work
dir, checkpoint, logs and pictures. The figures also go to
``WORK_DIR/demo_summary.json`` (what `make gpu-check` reads). Exits with 3 when
the run shows no learning (the loss did not fall, the metric is below the demo's
threshold or no picture was drawn), with 1 when the run's files are missing. The
classification demo's threshold is chance (100 / number of classes, read from the
config's head) plus ``CLS_MARGIN`` points of top-1 accuracy.
"""

import argparse
import glob
import json
import math
import os
import os.path as osp
import re
import sys
import textwrap
from typing import List, Optional, Sequence, Tuple

# The learning check: metric name in the test results and its threshold (cls:
# computed from the number of classes, see learning_bar).
THRESHOLDS = {'det': ('coco/bbox_mAP', 0.3), 'seg': ('mIoU', 50.0), 'cls': ('accuracy/top1', None)}
# Top-1 (in %) of the classification demo must beat chance by this many points.
CLS_MARGIN = 30.0
# The validation metrics drawn as curves.
CURVE_METRICS = {
    'det': ('coco/bbox_mAP', 'coco/segm_mAP'),
    'seg': ('mIoU', 'mAcc'),
    'cls': ('accuracy/top1',),
}
# What a person should see when the demo worked (figures measured here, docs/demo.md).
GOOD_RESULT = {
    'det': (
        'the loss falls from 4-8 to about 0.5, bbox mAP climbs to 0.6-0.67 and segm mAP to '
        '0.74-0.77 by epoch 20; in the pictures most shapes get one box of the right class '
        'scoring above 90 (scores are drawn in percent) and a mask following the outline, '
        'with misses and duplicates where shapes overlap'
    ),
    'seg': (
        'the loss falls below 0.05 and mIoU climbs to about 90; in the pictures the predicted '
        'label map (right) matches the ground truth (left) except along the shape edges '
        '(triangle corners come out rounded)'
    ),
    'cls': (
        'the loss (each logged value the mean of 5 iterations) falls from 0.7-1.1 to about 0.1 '
        'or below and top-1 reaches 92-100 by epoch 1-3; in the pictures the predicted class '
        'matches the '
        'ground truth with scores near 1 (red and blue swapped: the hook draws the BGR image)'
    ),
}
# Exit code of a run that ended but shows no learning (1 is left to missing files).
NO_LEARNING = 3
# mmengine names each run's log folder by its start time.
TIMESTAMP = re.compile(r'^\d{8}_\d{6}$')


def read_jsonl(path: str) -> List[dict]:
    """Records of an mmengine json log (one JSON object per line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def latest_run_dir(work_dir: str) -> str:
    """The newest ``<work_dir>/<timestamp>`` folder that holds a scalars.json."""
    runs = sorted(
        d
        for d in os.listdir(work_dir)
        if TIMESTAMP.match(d) and osp.isfile(osp.join(work_dir, d, 'vis_data', 'scalars.json'))
    )
    if not runs:
        raise SystemExit(
            f'no <timestamp>/vis_data/scalars.json in {work_dir}: '
            'was it the work dir of a training run?'
        )
    return osp.join(work_dir, runs[-1])


def test_metrics(work_dir: str) -> dict:
    """Metrics of the tools/test.py run (<work_dir>/test/<timestamp>/<timestamp>.json)."""
    paths = sorted(glob.glob(osp.join(work_dir, 'test', '*', '*.json')))
    paths = [p for p in paths if TIMESTAMP.match(osp.basename(osp.dirname(p)))]
    if not paths:
        raise SystemExit(f'no test metrics under {work_dir}/test: did tools/test.py run?')
    return read_jsonl(paths[-1])[-1]


def loss_keys(train: Sequence[dict]) -> List[str]:
    """The total loss first, then each loss term (a term equal to the total is left out)."""
    keys = [k for k in train[0] if 'loss' in k]
    terms = [
        k
        for k in keys
        if k != 'loss' and any(abs(r.get(k, 0.0) - r.get('loss', 0.0)) > 1e-9 for r in train)
    ]
    return (['loss'] if 'loss' in keys else []) + terms


def plot_curves(
    train: Sequence[dict], val: Sequence[dict], metrics: Sequence[str], out_file: str, title: str
) -> None:
    """One panel per loss term and for the learning rate (per logged iteration),
    and one for the validation metrics (per evaluation)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = loss_keys(train) + (['lr'] if 'lr' in train[0] else []) + ['val']
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.5 * nrows), squeeze=False)
    iters = [r['step'] for r in train]
    for ax, key in zip(axes.flat, panels):
        if key == 'val':
            for name in metrics:
                points = [(r['step'], r[name]) for r in val if name in r]
                if points:
                    ax.plot(*zip(*points), marker='o', label=f'{name} {points[-1][1]:.3g}')
            ax.set_xlabel('epoch')
            ax.set_title('validation')
            if ax.lines:
                top = max(max(line.get_ydata()) for line in ax.lines)
                ax.set_ylim(0, 1.02 if top <= 1 else 102)  # COCO AP in [0, 1], mIoU in %
                ax.legend(fontsize=8, loc='lower right')
            else:
                ax.text(0.5, 0.5, 'no evaluation logged', ha='center', transform=ax.transAxes)
        else:
            ax.plot(iters, [r.get(key, float('nan')) for r in train], lw=1.2)
            ax.set_xlabel('iteration')
            ax.set_title(key)
            if key == 'lr':
                ax.ticklabel_format(axis='y', style='sci', scilimits=(0, 0))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis('off')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)


def dumped_config(work_dir: str) -> Optional[str]:
    """The config file mmengine copied into the work dir (<config name>.py)."""
    configs = sorted(glob.glob(osp.join(work_dir, '*.py')))
    return configs[0] if configs else None


def read_config(config: Optional[str]):
    """The dumped config (without importing its custom modules), or None."""
    if config is None:
        return None
    from mmengine.config import Config

    return Config.fromfile(config, import_custom_modules=False)


def score_threshold(cfg) -> Optional[float]:
    """score_thr of the config's DetVisualizationHook."""
    if cfg is None:
        return None
    return cfg.get('default_hooks', {}).get('visualization', {}).get('score_thr', None)


def learning_bar(task: str, cfg) -> Tuple[str, float, str]:
    """(metric, threshold, how the threshold was set) of the learning check.

    For ``cls`` the threshold is chance, 100 / the head's ``num_classes``, plus
    ``CLS_MARGIN`` points of top-1.
    """
    key, threshold = THRESHOLDS[task]
    if threshold is not None:
        return key, threshold, ''
    num_classes = (cfg or {}).get('model', {}).get('head', {}).get('num_classes')
    if not isinstance(num_classes, int) or num_classes < 2:
        raise SystemExit(
            f'the classification check needs model.head.num_classes (an int >= 2) in the '
            f'config copied into the work dir; found {num_classes!r}'
        )
    chance = 100.0 / num_classes
    return key, chance + CLS_MARGIN, f'chance {chance:.1f} + {CLS_MARGIN:g} points'


def pictures_in(folder: Optional[str]) -> List[str]:
    """PNG files under ``folder`` (mmseg's visualizer nests them in vis_data/vis_image)."""
    if not folder or not osp.isdir(folder):
        return []
    return sorted(glob.glob(osp.join(folder, '**', '*.png'), recursive=True))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir')
    parser.add_argument('--task', choices=sorted(CURVE_METRICS), default='det')
    parser.add_argument('--pred-dir', help='where tools/test.py --show-dir drew the predictions')
    parser.add_argument('--train-seconds', type=int)
    parser.add_argument('--total-seconds', type=int)
    parser.add_argument('--nproc', type=int)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work_dir = args.work_dir
    run_dir = latest_run_dir(work_dir)
    records = read_jsonl(osp.join(run_dir, 'vis_data', 'scalars.json'))
    train = [r for r in records if 'loss' in r]
    metric_names = CURVE_METRICS[args.task]
    val = [r for r in records if any(name in r for name in metric_names)]
    if not train:
        raise SystemExit(f'{run_dir}/vis_data/scalars.json has no training losses')

    pictures = osp.join(work_dir, 'pictures')
    os.makedirs(pictures, exist_ok=True)
    curves = osp.join(pictures, 'training_curves.png')
    config = dumped_config(work_dir)
    name = osp.splitext(osp.basename(config))[0] if config else osp.basename(work_dir)
    plot_curves(
        train,
        val,
        metric_names,
        curves,
        title=f'{name}: training losses and lr per logged iteration, '
        'validation metrics per evaluation',
    )

    metrics = test_metrics(work_dir)
    losses = [r['loss'] for r in train]
    cfg = read_config(config)
    key, threshold, how = learning_bar(args.task, cfg)
    window = max(1, len(losses) // 10)
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = osp.join(work_dir, osp.basename(f.read().strip()))
    predictions = pictures_in(args.pred_dir)

    print('\n==================== demo summary ====================')
    print(
        f'processes: {args.nproc}  train time: {args.train_seconds}s  '
        f'total (data + train + test): {args.total_seconds}s'
    )
    print(f'loss (mean of first/last {window} logged values): {first:.3f} -> {last:.3f}')
    evaluations = ', '.join(f'{r[key]:.4g}' for r in val if key in r)
    print(f'validation {key} per evaluation: {evaluations or "none logged"}')
    print('test (tools/test.py on the checkpoint):')
    figures = [
        f'{name}={value:.4g}'
        for name, value in metrics.items()
        if name not in ('step', 'time', 'data_time')
    ]
    print(textwrap.fill('  '.join(figures), width=100, initial_indent='  ', subsequent_indent='  '))

    print('where everything is:')
    print(f'  work dir:       {work_dir}')
    print(f'  checkpoint:     {checkpoint}')
    log = osp.join(run_dir, osp.basename(run_dir) + '.log')
    print(f'  training log:   {log} (config, environment, every log line)')
    consoles = sorted(glob.glob(osp.join(work_dir, '*_console.log')))
    if consoles:
        print(f'  full console:   {", ".join(consoles)}')
    print(f'  curves:         {curves}')
    if predictions:
        what = {
            'det': 'ground truth left, prediction right: boxes, masks, class and score, '
            f'drawn for scores >= {score_threshold(cfg)}',
            'seg': 'ground truth left, predicted label map right, over the image',
            'cls': 'each image enlarged, with its ground-truth class, the predicted class '
            'and its score',
        }[args.task]
        print(
            f'  predictions:    {osp.dirname(predictions[0])}/ ({len(predictions)} images; {what})'
        )
    else:
        print(f'  predictions:    none drawn in {args.pred_dir}')
    print(f'a good result:  {GOOD_RESULT[args.task]}')

    ok = last < first and metrics.get(key, -1) >= threshold and bool(predictions)
    print(
        f'learning check: {key} {metrics.get(key, float("nan")):.4g} '
        f'(needs >= {threshold:.4g}{": " + how if how else ""}), '
        f'loss falls: {last < first}, pictures drawn: {bool(predictions)} -> '
        f'{"PASS" if ok else "FAIL"}'
    )
    figures = dict(
        task=args.task, processes=args.nproc, train_seconds=args.train_seconds,
        total_seconds=args.total_seconds, loss_first=first, loss_last=last,
        test={k: v for k, v in metrics.items() if k not in ('step', 'time', 'data_time')},
        check=dict(metric=key, value=metrics.get(key), threshold=threshold,
                   loss_falls=last < first, pictures=len(predictions), passed=ok),
        checkpoint=checkpoint,
    )  # fmt: skip
    with open(osp.join(work_dir, 'demo_summary.json'), 'w') as f:
        json.dump(figures, f, indent=1)
    sys.exit(0 if ok else NO_LEARNING)


if __name__ == '__main__':
    main()
