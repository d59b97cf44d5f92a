"""Generate the synthetic shapes datasets used by ``make demo``.

Example::

    python tools/demo/make_demo_data.py --out data/demo \
        --num-train 64 --num-val 16 --seed 0
    python tools/demo/make_demo_data.py --task cls --out data/demo

The detection and segmentation demos (``--task det`` or ``seg``, the default)
share ``<out>/coco`` (COCO instances) and ``<out>/seg`` (mmseg label maps); the
classification demo (``--task cls``) gets ``<out>/cls/{train,val}/<class>/*.png``
(mmpretrain's CustomDataset layout, ``--num-train``/``--num-val`` images per
class). See ``mmdsnet.demo.synthetic_data`` for the layouts and label
conventions. Re-running with the same parameters is a no-op unless ``--force``.
"""

import argparse
import os.path as osp

from mmdsnet.demo.synthetic_data import generate_cls_data, generate_demo_data

# generator, --num-train and --num-val defaults (cls: per class)
TASKS = {
    'det': (generate_demo_data, 64, 16),
    'seg': (generate_demo_data, 64, 16),
    'cls': (generate_cls_data, 100, 30),
}


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description='Generate the synthetic shapes demo dataset '
        '(COCO instances + semantic label maps, or the classification image folders).'
    )
    parser.add_argument(
        '--task',
        choices=sorted(TASKS),
        default='det',
        help='the demo the data is for (det and seg share one set; default: det)',
    )
    parser.add_argument(
        '--out', default='data/demo', help='output folder (default: data/demo; cls: <out>/cls)'
    )
    parser.add_argument(
        '--num-train',
        type=int,
        help='training images (default: 64; cls: 100 per class)',
    )
    parser.add_argument(
        '--num-val', type=int, help='validation images (default: 16; cls: 30 per class)'
    )
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument(
        '--force', action='store_true', help='regenerate even if the output is up to date'
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Parse arguments, generate (or skip) and print a one-line summary."""
    args = parse_args(argv)
    generate, num_train, num_val = TASKS[args.task]
    out = osp.join(args.out, 'cls') if args.task == 'cls' else args.out
    result = generate(
        out,
        args.num_train if args.num_train is not None else num_train,
        args.num_val if args.num_val is not None else num_val,
        seed=args.seed,
        force=args.force,
        verbose=True,
    )
    if result['skipped']:
        print(f'{out} is up to date ({result["params"]}); skipping (use --force to regenerate)')
    else:
        print(f'wrote demo data to {out} in {result["seconds"]:.1f}s: {result["splits"]}')


if __name__ == '__main__':
    main()
