"""Throughput of the DS-Block attentions per PyTorch SDPA kernel, per stage.

    python tools/analysis_tools/attention_kernels.py [--arch small]
        [--shape 800 1344] [--kernels flash math] [--trials 3]

For every stage it times the three attentions of one block (global
self-attention, local queries on global keys, global queries on local keys)
forward and backward, and prints GFLOP/s (4 * Lq * Lk * d per head forward,
twice that backward), and the fp32 matrix-multiply rate of the same device:
a kernel near that rate means the time is the FLOPs of the co-attention, not
the kernel.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmdsnet.models import DSNet

KERNELS = {
    'flash': SDPBackend.FLASH_ATTENTION,
    'math': SDPBackend.MATH,
    'efficient': SDPBackend.EFFICIENT_ATTENTION,
}


def attention_shapes(arch, height, width):
    """(stage, name, heads, Lq, Lk, head_dims) of one block per stage.

    Read off a built DSNet, so the global grids follow its ``global_resize``
    (stage 4 shrinks its 1/32 map by 2 again) and its padding (maps are
    ceil(size / stride)).
    """
    model = DSNet(arch)
    shapes = []
    for stage, (embed, blocks) in enumerate(zip(model.patch_embeds, model.stages)):
        height, width = -(-height // embed.stride[0]), -(-width // embed.stride[1])
        block = blocks[0]
        num_local = height * width
        grid_h, grid_w = block.global_size(height, width)
        num_global = grid_h * grid_w
        heads = block.num_heads
        head_dims = embed.out_channels // 2 // heads
        shapes += [
            (stage, 'global self', heads, num_global, num_global, head_dims),
            (stage, 'local q, global kv', heads, num_local, num_global, head_dims),
            (stage, 'global q, local kv', heads, num_global, num_local, head_dims),
        ]
    return shapes


def time_kernel(kernel, heads, len_q, len_k, head_dims, trials, device):
    """Median forward and backward seconds of one SDPA call."""
    q = torch.randn(1, heads, len_q, head_dims, device=device, requires_grad=True)
    k = torch.randn(1, heads, len_k, head_dims, device=device, requires_grad=True)
    v = torch.randn(1, heads, len_k, head_dims, device=device, requires_grad=True)
    forward, backward = [], []
    with sdpa_kernel(KERNELS[kernel]):
        for _ in range(trials + 1):  # the first is warm-up
            start = time.perf_counter()
            out = F.scaled_dot_product_attention(q, k, v)
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
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1344], metavar=('H', 'W'))
    parser.add_argument('--kernels', nargs='+', default=['flash', 'math'], choices=sorted(KERNELS))
    parser.add_argument('--trials', type=int, default=3)
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f'--trials must be at least 1, got {args.trials}')
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    rows = []
    print(
        f'{"stage":5s} {"attention":20s} {"heads":5s} {"Lq x Lk":>15s} {"kernel":7s} '
        f'{"fwd ms":>8s} {"GFLOP/s":>7s} {"bwd ms":>8s} {"GFLOP/s":>7s}'
    )
    for stage, name, heads, len_q, len_k, head_dims in attention_shapes(args.arch, *args.shape):
        flops = 4 * len_q * len_k * head_dims * heads
        for kernel in args.kernels:
            fwd, bwd = time_kernel(kernel, heads, len_q, len_k, head_dims, args.trials, device)
            rows.append(
                dict(
                    stage=stage + 1,
                    attention=name,
                    heads=heads,
                    len_q=len_q,
                    len_k=len_k,
                    head_dims=head_dims,
                    kernel=kernel,
                    forward_ms=fwd * 1e3,
                    backward_ms=bwd * 1e3,
                    forward_gflops_per_s=flops / fwd / 1e9,
                    backward_gflops_per_s=2 * flops / bwd / 1e9,
                )
            )
            row = rows[-1]
            print(
                f'{stage + 1:5d} {name:20s} {heads:5d} {f"{len_q}x{len_k}":>15s} {kernel:7s} '
                f'{row["forward_ms"]:8.1f} {row["forward_gflops_per_s"]:7.1f} '
                f'{row["backward_ms"]:8.1f} {row["backward_gflops_per_s"]:7.1f}'
            )
    print(f'fp32 matmul 2048^3 on the same device: {matmul_gflops(device):.1f} GFLOP/s')
    print(f'device: {device.type}, {torch.get_num_threads()} threads; torch {torch.__version__}')
    return rows


if __name__ == '__main__':
    main()
