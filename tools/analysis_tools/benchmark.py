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
AdamW step. ``--settings``, ``--det-size`` and ``--throughput-setting`` take
any input size (``make gpu-check``'s CPU mode uses small ones). The models
and cases are in mmdsnet/analysis/benchmark.py, the memory measurement in
mmdsnet/analysis/memory.py; this tool selects, runs and reports them.
"""

import argparse
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time

import torch

from mmdsnet.analysis.benchmark import (
    BACKBONE_SHAPES,
    BACKBONES,
    DETECTORS,
    PRECISIONS,
    make_cases,
)
from mmdsnet.analysis.inputs import parse_setting
from mmdsnet.analysis.memory import measure_rss_growth_mb, peak_memory_mb, release_free_heap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--suites', default='backbone,detector,throughput')
    parser.add_argument(
        '--backbones',
        default=','.join(BACKBONES),
        help='comma-separated subset of: ' + ', '.join(BACKBONES),
    )
    parser.add_argument(
        '--settings',
        default=','.join(BACKBONE_SHAPES),
        help="backbone input settings, 'HxW bN' or 'S bN' (default: "
        + ', '.join(BACKBONE_SHAPES)
        + ')',
    )
    parser.add_argument(
        '--precisions',
        default='fp32,bf16,fp16',
        help='throughput suite: fp32 and/or bf16, fp16 autocast',
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
    parser.add_argument('--trials', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument(
        '--keep-heap',
        action='store_true',
        help='CPU: do not trim the heap before each timed run (faster runs, '
        'but the process grows with the number of cases)',
    )
    parser.add_argument('--measure-memory', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--out', default='work_dirs/benchmark.json')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    names = [n for n in args.backbones.split(',') if n]
    unknown = set(names) - set(BACKBONES)
    if unknown:
        parser.error(f'unknown backbones {sorted(unknown)}; choose from {list(BACKBONES)}')
    detectors = [n for n in args.detectors.split(',') if n]
    unknown = set(detectors) - set(DETECTORS)
    if unknown:
        parser.error(f'unknown detectors {sorted(unknown)}; choose from {list(DETECTORS)}')
    modes = [m for m in args.modes.split(',') if m]
    if not modes or set(modes) - {'eval', 'train'}:
        parser.error(f'unknown modes {modes}; choose from eval, train')
    settings = [s for s in args.settings.split(',') if s]
    for setting in settings + [args.throughput_setting or '224 b64']:
        try:
            parse_setting(setting)
        except ValueError as error:
            parser.error(str(error))
    precisions = [p for p in args.precisions.split(',') if p]
    if not precisions or set(precisions) - set(PRECISIONS):
        parser.error(f'unknown precisions {precisions}; choose from {list(PRECISIONS)}')
    det_precisions = [p for p in args.det_precisions.split(',') if p]
    if not det_precisions or set(det_precisions) - {'fp32', 'amp'}:
        parser.error(f'unknown detector precisions {det_precisions}; choose from fp32, amp')
    if len(args.det_size.split('x')) != 2 or not args.det_size.replace('x', '').isdigit():
        parser.error(f"--det-size {args.det_size!r} is not 'HxW' (e.g. 800x1333)")
    suites = set(args.suites.split(','))
    if device.type == 'cpu' and args.throughput_setting is None:
        suites.discard('throughput')
    cases = make_cases(
        suites,
        device,
        names,
        settings,
        modes,
        detectors,
        precisions,
        det_precisions,
        args.det_size,
        args.throughput_setting or '224 b64',
    )
    if args.measure_memory is not None:  # child process of peak_memory_mb
        print(measure_rss_growth_mb(cases[args.measure_memory], device))
        return None
    selection = [
        '--suites',
        ','.join(sorted(suites)),
        '--precisions',
        args.precisions,
        '--det-precisions',
        args.det_precisions,
        '--det-size',
        args.det_size,
        *(['--throughput-setting', args.throughput_setting] if args.throughput_setting else []),
        '--backbones',
        args.backbones,
        '--detectors',
        args.detectors,
        '--settings',
        args.settings,
        '--modes',
        args.modes,
    ]

    if not cases:
        parser.error(
            f'nothing to run for suites {args.suites!r} on {device.type} '
            '(throughput on a CPU needs --throughput-setting)'
        )
    groups = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    for group, members in groups.items():
        if not args.no_memory:
            for case in members:
                case.memory_mb = peak_memory_mb(
                    case, device, measure_memory_command(selection, cases.index(case))
                )
        for case in members:
            for _ in range(args.warmup):
                if not args.keep_heap:
                    release_free_heap(device)
                case.run_once(device)
            if hasattr(case, 'measure_saved'):
                case.saved_mb = case.measure_saved(device)
        for _ in range(args.trials):  # interleaved: one trial of each in turn
            for case in members:
                if not args.keep_heap:
                    release_free_heap(device)
                case.times.append(case.run_once(device))
        for case in members:
            case.state = None  # free the model before the next group
        print_group(group, members)
        # rewritten after every group: an interrupted run keeps what it measured
        report = write_report(args, device, [c for c in cases if c.times])
    print(f'machine: {report["machine"]}; torch {torch.__version__}; wrote {args.out}')
    return report


def measure_memory_command(selection, index):
    """This tool in a fresh interpreter, measuring case ``index`` of the same
    selection alone (``--measure-memory``, for :func:`peak_memory_mb`)."""
    return [sys.executable, osp.abspath(__file__), *selection, '--measure-memory', str(index)]


def write_report(args, device, done):
    machine = (
        torch.cuda.get_device_name()
        if device.type == 'cuda'
        else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    )
    report = dict(
        machine=machine,
        torch=torch.__version__,
        trials=args.trials,
        warmup=args.warmup,
        heap_trimmed=not args.keep_heap,
        date=time.strftime('%Y-%m-%d'),
        results=[
            dict(
                group=c.group,
                name=c.name,
                median_s=statistics.median(c.times),
                times_s=c.times,
                peak_memory_mb=c.memory_mb,
                saved_activations_mb=c.saved_mb,
                **(
                    dict(images_per_s=c.batch / statistics.median(c.times))
                    if hasattr(c, 'batch')
                    else {}
                ),
            )
            for c in done
        ],
    )
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    return report


def print_group(group, members):
    first = members[0]
    base_time = statistics.median(first.times)
    with_saved = first.saved_mb is not None
    with_rate = hasattr(first, 'batch')
    print(f'\n{group} (ratios to {first.name})')
    print(
        f'| {"model":30s} | median ms | x time | peak MB | x mem |'
        + (' saved MB | x saved |' if with_saved else '')
        + (' img/s |' if with_rate else '')
    )
    print(
        '|'
        + '-' * 32
        + '|-----------|--------|---------|-------|'
        + ('----------|---------|' if with_saved else '')
        + ('-------|' if with_rate else '')
    )
    for case in members:
        median = statistics.median(case.times)
        memory = case.memory_mb if case.memory_mb is not None else float('nan')
        ratio_mem = memory / first.memory_mb if first.memory_mb else float('nan')
        line = (
            f'| {case.name:30s} | {median * 1e3:9.1f} | {median / base_time:6.2f} | '
            f'{memory:7.0f} | {ratio_mem:5.2f} |'
        )
        if with_saved:
            line += f' {case.saved_mb:8.0f} | {case.saved_mb / first.saved_mb:7.2f} |'
        if with_rate:
            line += f' {case.batch / median:5.0f} |'
        print(line)
    sys.stdout.flush()


if __name__ == '__main__':
    main()
