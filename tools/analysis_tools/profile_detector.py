"""Where one training iteration of a detector spends its time: torch.profiler.

    python tools/analysis_tools/profile_detector.py [CONFIG] [--size 800x1333]
        [--amp] [--top 25] [--out work_dirs/profile_detector.txt]

Builds the config's model (backbone weights not loaded), makes 2 images of
``--size`` with 8 boxes and masks each, runs ``--warmup`` (2) iterations (forward,
backward, AdamW step; ``--amp``: fp16 autocast with a dynamic loss scaler, as
``tools/train.py --amp``) and profiles the third. Writes the operator table
(sorted by device self time on a GPU, CPU self time otherwise) and the share
per operator family to ``--out`` and prints them.
"""

import argparse
import os
import os.path as osp

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mmdsnet.analysis.inputs import build_detector, detector_batch
from mmdsnet.analysis.profiling import family_shares

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def build(config, device, height, width):
    model = build_detector(config).to(device)
    model.train()
    return model, detector_batch(model, device, height, width)


def timed_phases(model, data, optimizer, scaler, device, amp):
    """Wall time of forward + loss, backward and the optimizer step of one iteration."""
    import time

    def now():
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter()

    optimizer.zero_grad(set_to_none=True)
    t0 = now()
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        loss, _ = model.parse_losses(model(**data, mode='loss'))
    t1 = now()
    scaler.scale(loss).backward()
    t2 = now()
    scaler.step(optimizer)
    scaler.update()
    t3 = now()
    return {
        'forward + loss': (t1 - t0) * 1e3,
        'backward': (t2 - t1) * 1e3,
        'optimizer step': (t3 - t2) * 1e3,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'config', nargs='?', default=osp.join(ROOT, 'configs/mask_rcnn_dsnet_s_fpn_1x_coco.py')
    )
    parser.add_argument('--size', default='800x1333', help='image size HxW')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--top', type=int, default=25)
    parser.add_argument('--warmup', type=int, default=2, help='iterations before the profiled one')
    parser.add_argument('--out', default='work_dirs/profile_detector.txt')
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.split('x'))
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if args.amp and device.type != 'cuda':
        parser.error('--amp needs a GPU (mmcv has no fp16 CPU kernels)')
    model, data = build(args.config, device, height, width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)

    def iteration():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.amp):
            with record_function('forward + loss'):
                loss, _ = model.parse_losses(model(**data, mode='loss'))
        with record_function('backward'):
            scaler.scale(loss).backward()
        with record_function('optimizer step'):
            scaler.step(optimizer)
            scaler.update()

    for _ in range(args.warmup):
        iteration()
    phases = timed_phases(model, data, optimizer, scaler, device, args.amp)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    if device.type == 'cuda':
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        iteration()
        if device.type == 'cuda':
            torch.cuda.synchronize()
    events = prof.key_averages()
    on_gpu = device.type == 'cuda'
    attr = 'self_device_time_total' if on_gpu else 'self_cpu_time_total'
    table = events.table(sort_by=attr, row_limit=args.top)
    shares = family_shares(events, on_gpu, skip=('forward + loss', 'backward', 'optimizer step'))
    total = sum(shares.values()) or 1
    lines = [
        f'{osp.basename(args.config)}: one training iteration, 2x{args.size}, '
        f'{"AMP fp16" if args.amp else "fp32"}, {device.type} '
        f'({torch.cuda.get_device_name() if on_gpu else "CPU"}), torch {torch.__version__}',
        'phases of an unprofiled iteration (ms, synchronised): '
        + ', '.join(f'{k} {v:.1f}' for k, v in phases.items()),
        'self time by operator family:',
        *(
            f'  {family:22s} {micros / 1e3:9.1f} ms  {100 * micros / total:5.1f}%'
            for family, micros in sorted(shares.items(), key=lambda kv: -kv[1])
        ),
        '',
        table,
    ]
    text = '\n'.join(lines)
    print(text)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text + '\n')
    return shares


if __name__ == '__main__':
    main()
