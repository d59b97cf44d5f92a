"""Throughput of the DS-Block attentions per PyTorch SDPA kernel, per stage.

    python tools/analysis_tools/attention_kernels.py [--arch small]
        [--shape 800 1344] [--kernels flash math] [--precisions fp32]
        [--batch 1] [--splits never auto] [--sms 132] [--plan] [--trials 3]
        [--out rows.json]

For every stage it times the three attentions of one block (global
self-attention, local queries on global keys, global queries on local keys)
forward and backward, and prints GFLOP/s (4 * Lq * Lk * d per head forward,
twice that backward), and the fp32 matrix-multiply rate of the same device:
a kernel near that rate means the time is the FLOPs of the co-attention, not
the kernel. ``--splits never auto`` times each call both plain and the way
``attn_split='auto'`` runs it in training on CUDA (queries folded, keys split
by ``plan_attention`` for ``--sms`` SMs: the GPU's, or an H100's 132, also on
a CPU), with the thread blocks each way launches, so the two can be compared
in one run; ``--plan`` prints those plans and thread blocks without timing
anything (the table in docs/performance.md). A kernel that refuses a call
(flash in fp32 on CUDA; on the CPU the memory-efficient kernel) is reported
as refused.
"""

import argparse
import json
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmdsnet.analysis.attention_backends import attention_shapes
from mmdsnet.analysis.inputs import PRECISIONS, image_side, output_file, positive_int
from mmdsnet.analysis.profiling import write_text
from mmdsnet.models import DSNet
from mmdsnet.models.layers.fused_attention import (
    EFFICIENT_TILES,
    FLASH_TILES,
    AttentionPlan,
    plan_attention,
    planned_attention,
    thread_blocks,
)

PLAIN = AttentionPlan()
KERNELS = {
    'flash': SDPBackend.FLASH_ATTENTION,
    'math': SDPBackend.MATH,
    'efficient': SDPBackend.EFFICIENT_ATTENTION,
}


def dtype_of(precision):
    """The tensors' dtype of a precision (fp32 runs without autocast in the tools)."""
    return PRECISIONS[precision] or torch.float32


def time_kernel(kernel, shape, trials, device, dtype=torch.float32, plan=PLAIN):
    """Median forward and backward seconds of one attention call.

    ``shape`` is (batch, heads, Lq, Lk, head_dims); ``plan`` folds queries
    and splits keys (``planned_attention``).
    """
    batch, heads, len_q, len_k, head_dims = shape

    def leaf(length):
        size = (batch, heads, length, head_dims)
        return torch.randn(size, device=device, dtype=dtype, requires_grad=True)

    q, k, v = leaf(len_q), leaf(len_k), leaf(len_k)
    forward, backward = [], []
    with sdpa_kernel(KERNELS[kernel]):
        for _ in range(trials + 1):  # the first is warm-up
            start = time.perf_counter()
            out = planned_attention(q, k, v, 0.0, plan)
            if device.type == 'cuda':
                torch.cuda.synchronize()
            middle = time.perf_counter()
            out.sum().backward()
            if device.type == 'cuda':
                torch.cuda.synchronize()
            forward.append(middle - start)
            backward.append(time.perf_counter() - middle)
    return sorted(forward[1:])[trials // 2], sorted(backward[1:])[trials // 2]


def matmul_gflops(device, size=2048, trials=3):
    """The machine's fp32 matrix-multiply rate: the ceiling a kernel is read against."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    times = []
    for _ in range(trials + 1):  # the first is warm-up
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / sorted(times[1:])[trials // 2] / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='small', choices=sorted(DSNet.arch_settings))
    parser.add_argument(
        '--shape', type=image_side, nargs=2, default=[800, 1344], metavar=('H', 'W')
    )
    parser.add_argument('--kernels', nargs='+', default=['flash', 'math'], choices=sorted(KERNELS))
    parser.add_argument('--precisions', nargs='+', default=['fp32'], choices=list(PRECISIONS))
    parser.add_argument('--batch', type=positive_int, default=1, help='images per call')
    parser.add_argument(
        '--splits', nargs='+', default=['never'], choices=['never', 'auto'],
        help="plain calls, and/or as attn_split='auto' runs them in training",
    )  # fmt: skip
    parser.add_argument(
        '--sms', type=positive_int, help="SM count for the 'auto' rule (default: the GPU's, or 132)"
    )
    parser.add_argument(
        '--plan', action='store_true', help="only the 'auto' plans and thread blocks, no timing"
    )
    parser.add_argument('--trials', type=positive_int, default=3)
    parser.add_argument('--out', type=output_file, help='write the rows as JSON')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    sms = args.sms or (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == 'cuda'
        else 132
    )
    rows = []
    print(
        f'{"stage":5s} {"attention":20s} {"heads":5s} {"Lq x Lk":>15s} {"kernel":9s} '
        f'{"prec":4s} {"split":5s} {"q/k chunks":>10s} {"blocks f/b":>11s} '
        f'{"fwd ms":>8s} {"GFLOP/s":>7s} {"bwd ms":>8s} {"GFLOP/s":>7s}'
    )
    for stage, name, heads, len_q, len_k, head_dims in attention_shapes(args.arch, *args.shape):
        flops = 4 * args.batch * len_q * len_k * head_dims * heads
        shape = (args.batch, heads, len_q, len_k, head_dims)
        for kernel in args.kernels:
            for precision in args.precisions:
                tiles = FLASH_TILES if precision in ('fp16', 'bf16') else EFFICIENT_TILES
                auto = plan_attention(args.batch * heads, len_q, len_k, sms, tiles, True)
                for split in args.splits:
                    plan = auto if split == 'auto' else PLAIN
                    blocks = thread_blocks(args.batch * heads, len_q, len_k, plan, tiles)
                    row = dict(
                        stage=stage + 1, attention=name, batch=args.batch, heads=heads,
                        len_q=len_q, len_k=len_k, head_dims=head_dims, kernel=kernel,
                        precision=precision, split=split, folds=plan.folds, splits=plan.splits,
                        forward_blocks=blocks[0], backward_blocks=blocks[1],
                    )  # fmt: skip
                    label = (
                        f'{stage + 1:5d} {name:20s} {heads:5d} {f"{len_q}x{len_k}":>15s} '
                        f'{kernel:9s} {precision:4s} {split:5s} '
                        f'{f"{plan.folds}/{plan.splits}":>10s} {f"{blocks[0]}/{blocks[1]}":>11s}'
                    )
                    if args.plan:
                        rows.append(row)
                        print(label)
                        continue
                    try:
                        fwd, bwd = time_kernel(
                            kernel, shape, args.trials, device, dtype_of(precision), plan
                        )
                    except RuntimeError as error:  # the kernel does not take this call
                        row['refused'] = str(error).splitlines()[0]
                        rows.append(row)
                        print(f'{label} refused: {row["refused"][:60]}')
                        continue
                    row.update(
                        forward_ms=fwd * 1e3,
                        backward_ms=bwd * 1e3,
                        forward_gflops_per_s=flops / fwd / 1e9,
                        backward_gflops_per_s=2 * flops / bwd / 1e9,
                    )
                    rows.append(row)
                    print(
                        f'{label} {row["forward_ms"]:8.1f} {row["forward_gflops_per_s"]:7.1f} '
                        f'{row["backward_ms"]:8.1f} {row["backward_gflops_per_s"]:7.1f}'
                    )
    if args.plan:
        return rows
    matmul = matmul_gflops(device)
    print(f'fp32 matmul 2048^3 on the same device: {matmul:.1f} GFLOP/s')
    print(f'device: {device.type}, {torch.get_num_threads()} threads; torch {torch.__version__}')
    if args.out:
        summary = dict(
            rows=rows, matmul_gflops_per_s=matmul, device=device.type,
            sms_for_rule=sms, arch=args.arch, shape=args.shape,
        )  # fmt: skip
        write_text(args.out, json.dumps(summary, indent=1))
    return rows


if __name__ == '__main__':
    main()
