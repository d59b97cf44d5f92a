"""Speed and memory of DS-Net against the unfused formulation and mmdet's
peer backbones, in one process and one run.

    python tools/analysis_tools/benchmark.py [--suites backbone,detector]
        [--backbones ...] [--detectors ...] [--settings '224 b8,800x1344 b1']
        [--modes eval,train]
        [--trials 5] [--warmup 1] [--keep-heap] [--out work_dirs/benchmark.json]

Backbones (DS-Net-T/S/B, the unfused DS-Net-S yardstick, ResNet-50, Swin-T,
PVT-Small, PVTv2-b2 built from mmdet) are timed at 224x224 batch 8 and
800x1344 batch 1, in eval (no_grad forward) and train mode (forward + backward
of the summed outputs). Detectors (Mask R-CNN with R-50 + FPN, DS-Net-S + FPN,
DS-Net-S + DS-FPN and DS-Net-S + FPN with ``with_cp``, 2 images of 800x1333)
are timed for one training iteration and for inference. Entries are interleaved trial by trial after
warm-up; medians are reported with the ratio to the first entry of each
group. Peak memory is the CUDA allocator peak on a GPU, and on the CPU the
growth of the peak resident set during one warmed-up run in a fresh process
(so the numbers do not depend on the order of the cases) whose allocator
returns freed blocks to the OS. Train cases also report the activations
autograd keeps for the backward ("saved MB"), which ``with_cp`` cuts. The
DS-Net-S rows include the NCHW layout (``channels_last=False``) and
``with_cp=True`` to show what each costs or saves. On a GPU the
``throughput`` suite adds inference images/s at 224 batch 64 in fp32 and
under bf16 and fp16 autocast; ``--det-precisions fp32,amp`` times the
detectors in fp32 and under AMP as ``--amp`` trains (fp16 autocast, dynamic
loss scaling); a detector training iteration is forward, backward and an
AdamW step, each phase also timed (synchronised), and
``--backbone-precisions`` adds the backbone suite under autocast; ``--launches``
counts each backbone entry's kernel-launching operators per step (on the CPU).
``--settings``, ``--det-size`` and ``--throughput-setting`` take any input
size (``make gpu-check``'s CPU mode uses small ones). The models,
cases, selection check and table are in mmdsnet/analysis/benchmark.py, the
memory measurement in mmdsnet/analysis/memory.py; this tool parses the command
line, runs the groups and writes the report.
"""

import argparse
import json
import os
import os.path as osp
import sys

import torch

from mmdsnet.analysis.benchmark import (
    BACKBONE_SETTINGS,
    BACKBONES,
    DETECTORS,
    format_group,
    report,
    run_group,
    select_cases,
)
from mmdsnet.analysis.inputs import PRECISIONS, output_file, positive_int
from mmdsnet.analysis.memory import measure_rss_growth_mb

# The configs beside this tool: a source checkout's, or the installed package's .mim copy.
CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')
# The options that choose the cases (select_cases's arguments).
SELECTION = ('suites', 'backbones', 'settings', 'modes', 'detectors', 'precisions',
             'det_precisions', 'det_size', 'throughput_setting',
             'backbone_precisions')  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--suites', default='backbone,detector,throughput')
    parser.add_argument(
        '--backbones',
        default=','.join(BACKBONES),
        help='comma-separated subset of: ' + ', '.join(BACKBONES),
    )
    parser.add_argument(
        '--settings',
        default=','.join(BACKBONE_SETTINGS),
        help="backbone input settings, 'HxW bN' or 'S bN' (default: "
        + ', '.join(BACKBONE_SETTINGS)
        + ')',
    )
    parser.add_argument(
        '--precisions',
        default=','.join(PRECISIONS),
        help='throughput suite: fp32 and/or bf16, fp16 autocast',
    )
    parser.add_argument(
        '--launches',
        action='store_true',
        help="backbone suite: also count each entry's kernel-launching operators per step "
        '(on the CPU at 224 b1; mmdsnet/analysis/launches.py)',
    )
    parser.add_argument(
        '--backbone-precisions',
        default='fp32',
        help='backbone suite: fp32 and/or bf16, fp16 autocast (forward; backward as autograd runs)',
    )
    parser.add_argument(
        '--throughput-setting',
        help="throughput suite input (default '224 b64'; on a CPU the suite runs only when given)",
    )
    parser.add_argument(
        '--det-precisions',
        default='fp32',
        help='detector training: fp32 and/or amp (fp16 autocast); inference runs in fp32',
    )
    parser.add_argument('--det-size', default='800x1333', help='detector suite image size, HxW')
    parser.add_argument(
        '--detectors',
        default=','.join(DETECTORS),
        help='comma-separated subset of: ' + ', '.join(DETECTORS),
    )
    parser.add_argument('--modes', default='eval,train', help='eval, train or both')
    parser.add_argument('--trials', type=positive_int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument(
        '--keep-heap',
        action='store_true',
        help='CPU: do not trim the heap before each timed run (faster runs, '
        'but the process grows with the number of cases)',
    )
    parser.add_argument('--measure-memory', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--out', type=output_file, default='work_dirs/benchmark.json')
    return parser, parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        selection = {name: getattr(args, name) for name in SELECTION}
        cases = select_cases(device, **selection, config_dir=CONFIG_DIR)
    except ValueError as error:
        parser.error(str(error))
    if args.measure_memory is not None:  # the child process of peak_memory_mb
        print(measure_rss_growth_mb(cases[args.measure_memory], device))
        return None

    def memory_command(case):
        """This tool, as it was called, in a fresh interpreter measuring ``case`` alone."""
        index = str(cases.index(case))
        return [sys.executable, osp.abspath(__file__), *argv, '--measure-memory', index]

    groups = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    for group, members in groups.items():
        run_group(members, device, args.trials, args.warmup, trim_heap=not args.keep_heap,
                  memory_command=None if args.no_memory else memory_command,
                  launches=args.launches)  # fmt: skip
        print(format_group(group, members), flush=True)
        # rewritten after every group: an interrupted run keeps what it measured
        result = report(cases, device, args.trials, args.warmup, not args.keep_heap)
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    print(f'machine: {result["machine"]}; torch {torch.__version__}; wrote {args.out}')
    return result


if __name__ == '__main__':
    main()
