"""Where a DS-Net backbone spends its time: torch.profiler's operator table.

    python tools/analysis_tools/profile_backbone.py [--arch small]
        [--shape 800 1344] [--batch 1] [--mode eval|train]
        [--precision fp32|fp16|bf16] [--top 15] [--out FILE]

One warm-up run, the median wall time of three synchronised runs, then one
profiled run (forward, and backward in train mode, of the summed outputs;
``--precision fp16/bf16`` under autocast). Prints the operators with the most
self time, the share of the run per operator family and, on a GPU, how much
of the wall time the kernels fill: far below 100% the run waits on the host
(launches, Python), not on the GPU. ``--out`` writes the same text to a file.
"""

import argparse
import os
import os.path as osp
import time
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile

from mmdsnet.analysis.profiling import family_shares
from mmdsnet.models import DSNet

PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def run(model, x, mode, dtype=None):
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype else nullcontext()
    if mode == 'eval':
        with torch.no_grad(), autocast:
            model(x)
    else:
        model.zero_grad(set_to_none=True)
        with autocast:
            outs = model(x)
        sum(o.float().sum() for o in outs).backward()


def wall_ms(model, x, mode, dtype, trials=3):
    """Median wall time of ``trials`` runs, synchronised on a GPU."""
    times = []
    for _ in range(trials):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(model, x, mode, dtype)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[trials // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='small', choices=['tiny', 'small', 'base'])
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--mode', default='eval', choices=['eval', 'train'])
    parser.add_argument('--precision', default='fp32', choices=list(PRECISIONS))
    parser.add_argument('--top', type=int, default=15)
    parser.add_argument('--out', help='also write the text to this file')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dtype = PRECISIONS[args.precision]
    model = DSNet(args.arch, drop_path_rate=0.0).to(device).train(args.mode == 'train')
    x = torch.randn(args.batch, 3, *args.shape, device=device)
    run(model, x, args.mode, dtype)  # warm-up
    wall = wall_ms(model, x, args.mode, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        run(model, x, args.mode, dtype)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    events = prof.key_averages()
    on_gpu = device.type == 'cuda'
    shares = family_shares(events, on_gpu)
    total = sum(shares.values()) or 1
    name = device.type if not on_gpu else torch.cuda.get_device_name(device)
    lines = [
        f'DS-Net-{args.arch[0].upper()} {args.mode} at {args.batch}x{args.shape[0]}x'
        f'{args.shape[1]}, {args.precision}, on {name}, torch {torch.__version__}',
        f'wall time (median of 3, unprofiled): {wall:.1f} ms',
    ]
    if on_gpu:
        lines.append(
            f'kernel time: {total / 1e3:.1f} ms = {100 * total / 1e3 / wall:.0f}% of the wall time'
        )
    lines.append('self time by family:')
    for family, micros in sorted(shares.items(), key=lambda kv: -kv[1]):
        lines.append(f'  {family:16s} {micros / 1e3:9.1f} ms  {100 * micros / total:5.1f}%')
    sort_key = 'self_device_time_total' if on_gpu else 'self_cpu_time_total'
    text = '\n'.join(lines) + '\n\n' + events.table(sort_by=sort_key, row_limit=args.top) + '\n'
    print(text)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text)
    return shares


if __name__ == '__main__':
    main()
