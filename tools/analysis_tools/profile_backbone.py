"""Where a DS-Net backbone spends its time: torch.profiler's operator table.

    python tools/analysis_tools/profile_backbone.py [--arch small]
        [--shape 800 1344] [--batch 1] [--mode eval|train]
        [--precision fp32|fp16|bf16] [--cudnn-benchmark] [--top 15] [--out FILE]

One warm-up run, the median wall time of three synchronised runs, then one
profiled run (forward, and backward in train mode, of the summed outputs;
``--precision fp16/bf16`` under autocast). Prints the operators with the most
self time, the share of the run per operator family and, on a GPU, how much
of the wall time the kernels fill: far below 100% the run waits on the host
(launches, Python), not on the GPU. ``--cudnn-benchmark`` lets cuDNN time its
convolution algorithms first (``torch.backends.cudnn.benchmark``; the warm-up
run pays for it). ``--out`` writes the same text to a file.
"""

import argparse

import torch

from mmdsnet.analysis.inputs import PRECISIONS, image_side, output_file, positive_int
from mmdsnet.analysis.profiling import backbone_step, median_wall_ms, profile_run, write_text
from mmdsnet.models import DSNet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='small', choices=list(DSNet.arch_settings))
    parser.add_argument(
        '--shape', type=image_side, nargs=2, default=[800, 1344], metavar=('H', 'W')
    )
    parser.add_argument('--batch', type=positive_int, default=1)
    parser.add_argument('--mode', default='eval', choices=['eval', 'train'])
    parser.add_argument('--precision', default='fp32', choices=list(PRECISIONS))
    parser.add_argument(
        '--cudnn-benchmark', action='store_true', help='torch.backends.cudnn.benchmark = True'
    )
    parser.add_argument('--top', type=positive_int, default=15)
    parser.add_argument('--out', type=output_file, help='also write the text to this file')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    train = args.mode == 'train'
    model = DSNet(args.arch, drop_path_rate=0.0).to(device).train(train)
    x = torch.randn(args.batch, 3, *args.shape, device=device)

    def run():
        backbone_step(model, x, train, args.precision)

    run()  # warm-up
    wall = median_wall_ms(run, device)
    prof = profile_run(run, device)
    name = torch.cuda.get_device_name(device) if prof.on_gpu else device.type
    lines = [
        f'DS-Net-{args.arch[0].upper()} {args.mode} at {args.batch}x{args.shape[0]}x'
        f'{args.shape[1]}, {args.precision}, on {name}, torch {torch.__version__}'
        + (', cudnn.benchmark on' if args.cudnn_benchmark else ''),
        f'wall time (median of 3, unprofiled): {wall:.1f} ms',
    ]
    if prof.on_gpu:
        kernel_ms = prof.total_us / 1e3
        lines.append(
            f'kernel time: {kernel_ms:.1f} ms = {100 * kernel_ms / wall:.0f}% of the wall time'
        )
    lines += ['self time by family:', *prof.family_lines(16)]
    text = '\n'.join(lines) + '\n\n' + prof.table(args.top) + '\n'
    print(text)
    if args.out:
        write_text(args.out, text)
    return prof.shares


if __name__ == '__main__':
    main()
