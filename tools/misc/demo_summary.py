"""Summarise a demo run: the loss at the start and end of training (from
mmengine's scalars.json), the final metrics of tools/test.py, and the time.
Exits non-zero when the run shows no learning (loss did not fall, or the
metric is below the demo's threshold)."""
import argparse
import glob
import json
import os.path as osp
import sys

THRESHOLDS = {'det': ('coco/bbox_mAP', 0.3), 'seg': ('mIoU', 50.0)}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def latest(pattern):
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f'nothing matches {pattern}')
    return paths[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir')
    parser.add_argument('--task', choices=sorted(THRESHOLDS), default='det')
    parser.add_argument('--train-seconds', type=int)
    parser.add_argument('--total-seconds', type=int)
    parser.add_argument('--nproc', type=int)
    args = parser.parse_args()

    train_log = read_jsonl(latest(osp.join(args.work_dir, '*', 'vis_data', 'scalars.json')))
    losses = [r['loss'] for r in train_log if 'loss' in r]
    # tools/test.py writes its metrics to <work_dir>/test/<timestamp>/<timestamp>.json
    test_log = read_jsonl(latest(osp.join(args.work_dir, 'test', '*', '*.json')))
    metrics = test_log[-1]
    key, threshold = THRESHOLDS[args.task]
    window = max(1, len(losses) // 10)
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window

    print('\n==================== demo summary ====================')
    print(f'processes: {args.nproc}  train time: {args.train_seconds}s  '
          f'total (data + train + test): {args.total_seconds}s')
    print(f'loss (mean of first/last {window} logged values): {first:.3f} -> {last:.3f}')
    for name, value in metrics.items():
        if name not in ('step', 'time', 'data_time'):
            print(f'{name}: {value:.4g}')
    ok = last < first and metrics.get(key, -1) >= threshold
    print(f'learning check: {key} {metrics.get(key, float("nan")):.4g} (needs >= {threshold}), loss falls: '
          f'{last < first} -> {"PASS" if ok else "FAIL"}')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
