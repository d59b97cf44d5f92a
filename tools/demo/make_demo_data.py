"""Generate the synthetic shapes dataset used by ``make demo``.

Example::

    python tools/demo/make_demo_data.py --out data/demo \
        --num-train 64 --num-val 16 --seed 0

Writes ``<out>/coco`` (COCO instances) and ``<out>/seg`` (mmseg label maps);
see ``mmdsnet.demo.synthetic_data.py`` for the layout and label convention.
Re-running with the same parameters is a no-op unless ``--force``.
"""

import argparse

from mmdsnet.demo.synthetic_data import generate_demo_data


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description='Generate the synthetic shapes demo dataset '
        '(COCO instances + semantic label maps).'
    )
    parser.add_argument('--out', default='data/demo', help='output folder (default: data/demo)')
    parser.add_argument(
        '--num-train', type=int, default=64, help='number of training images (default: 64)'
    )
    parser.add_argument(
        '--num-val', type=int, default=16, help='number of validation images (default: 16)'
    )
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument(
        '--force', action='store_true', help='regenerate even if the output is up to date'
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Parse arguments, generate (or skip) and print a one-line summary."""
    args = parse_args(argv)
    result = generate_demo_data(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        seed=args.seed,
        force=args.force,
        verbose=True,
    )
    if result['skipped']:
        print(
            f'{args.out} is up to date ({result["params"]}); skipping (use --force to regenerate)'
        )
    else:
        print(f'wrote demo data to {args.out} in {result["seconds"]:.1f}s: {result["splits"]}')


if __name__ == '__main__':
    main()
