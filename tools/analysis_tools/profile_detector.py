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
import os.path as osp
from functools import partial

import torch
from torch.profiler import record_function

from mmdsnet.analysis.inputs import (
    build_detector,
    detector_batch,
    image_size,
    output_file,
    positive_int,
)
from mmdsnet.analysis.profiling import (
    PHASES,
    detector_iteration,
    profile_run,
    timed_phase,
    write_text,
)

# The configs beside this tool: a source checkout's, or the installed package's .mim copy.
CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'config', nargs='?', default=osp.join(CONFIG_DIR, 'mask_rcnn_dsnet_s_fpn_1x_coco.py')
    )
    parser.add_argument('--size', type=image_size, default='800x1333', help='image size HxW')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--top', type=positive_int, default=25)
    parser.add_argument('--warmup', type=int, default=2, help='iterations before the profiled one')
    parser.add_argument('--out', type=output_file, default='work_dirs/profile_detector.txt')
    args = parser.parse_args(argv)
    height, width = args.size
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if args.amp and device.type != 'cuda':
        parser.error('--amp needs a GPU (mmcv has no fp16 CPU kernels)')
    model = build_detector(args.config).to(device)
    model.train()
    data = detector_batch(model, device, height, width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)

    def iteration(phase):
        detector_iteration(model, data, optimizer, scaler, args.amp, phase)

    for _ in range(args.warmup):
        iteration(record_function)
    phases = {}
    iteration(partial(timed_phase, phases, device=device))
    prof = profile_run(partial(iteration, record_function), device, skip=PHASES)
    lines = [
        f'{osp.basename(args.config)}: one training iteration, 2x{height}x{width}, '
        f'{"AMP fp16" if args.amp else "fp32"}, {device.type} '
        f'({torch.cuda.get_device_name() if prof.on_gpu else "CPU"}), torch {torch.__version__}',
        'phases of an unprofiled iteration (ms, synchronised): '
        + ', '.join(f'{k} {v:.1f}' for k, v in phases.items()),
        'self time by operator family:',
        *prof.family_lines(22),
        '',
        prof.table(args.top),
    ]
    text = '\n'.join(lines)
    print(text)
    write_text(args.out, text + '\n')
    return prof.shares


if __name__ == '__main__':
    main()
