"""Where a DS-Net backbone spends its time: torch.profiler's operator table.

    python tools/analysis_tools/profile_backbone.py [--arch small]
        [--shape 800 1344] [--batch 1] [--mode eval|train] [--top 15]

One warm-up run, then one profiled run (forward, and backward in train mode,
of the summed outputs). Prints the operators with the most self time and the
share of the run that goes to attention, convolutions and interpolation.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mmdsnet.analysis.profiling import family_shares
from mmdsnet.models import DSNet


def run(model, x, mode):
    if mode == 'eval':
        with torch.no_grad():
            model(x)
    else:
        model.zero_grad(set_to_none=True)
        sum(o.sum() for o in model(x)).backward()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='small', choices=['tiny', 'small', 'base'])
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--mode', default='eval', choices=['eval', 'train'])
    parser.add_argument('--top', type=int, default=15)
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = DSNet(args.arch, drop_path_rate=0.0).to(device).train(args.mode == 'train')
    x = torch.randn(args.batch, 3, *args.shape, device=device)
    run(model, x, args.mode)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        run(model, x, args.mode)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    events = prof.key_averages()
    sort_key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    print(events.table(sort_by=sort_key, row_limit=args.top))
    shares = family_shares(events, device.type == 'cuda')
    total = sum(shares.values()) or 1
    print(
        f'DS-Net-{args.arch[0].upper()} {args.mode} at {args.batch}x{args.shape[0]}x'
        f'{args.shape[1]} on {device.type}: self time by family'
    )
    for family, micros in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f'  {family:16s} {micros / 1e3:9.1f} ms  {100 * micros / total:5.1f}%')
    return shares


if __name__ == '__main__':
    main()
