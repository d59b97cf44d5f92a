"""Operator families of a torch.profiler table: where a step's time goes."""

from typing import Dict, Iterable

from torch.autograd import DeviceType

# First match wins: norm before convolution (cuDNN's BN kernels say 'cudnn').
FAMILIES = {
    'attention (SDPA)': ('attention', 'flash', 'fmha', 'sdpa'),
    'roi ops / nms (mmcv)': ('roi', 'nms'),
    'norm': ('batch_norm', 'layer_norm', 'group_norm', 'native_norm', 'bn_fw', 'bn_bw'),
    'convolution': ('conv', 'cudnn', 'implicit_gemm', 'xmma', 'winograd', 'mkldnn_convolution'),
    'matmul': ('aten::mm', 'addmm', 'bmm', 'gemm', 'matmul', 'linear'),
    'interpolation': ('upsample', 'interpolate', 'grid_sampler'),
    'optimizer': ('adam', 'foreach', 'multi_tensor'),
    'copies / layout': ('copy', 'clone', 'contiguous', 'cat', 'index'),
    'GELU': ('gelu',),
    'elementwise': ('add', 'mul', 'relu', 'sigmoid', 'exp', 'elementwise'),
}


def family_of(name: str) -> str:
    """The family an operator or kernel name belongs to ('other' if none)."""
    lowered = name.lower()
    for family, fragments in FAMILIES.items():
        if any(f in lowered for f in fragments):
            return family
    return 'other'


def family_shares(events: Iterable, on_gpu: bool, skip=()) -> Dict[str, float]:
    """Self time per family in microseconds, from ``prof.key_averages()``.

    On a GPU an operator's self device time is its kernels' time, which the
    kernels' own rows repeat, so only kernel rows are counted there.
    """
    events = list(events)
    attr = 'self_device_time_total' if on_gpu else 'self_cpu_time_total'
    kernels = [e for e in events if on_gpu and getattr(e, 'device_type', None) == DeviceType.CUDA]
    shares: Dict[str, float] = {}
    for event in kernels or events:
        if event.key in skip:
            continue
        family = family_of(event.key)
        shares[family] = shares.get(family, 0) + getattr(event, attr)
    return shares
