"""FLOPs (multiply-accumulates, the convention of the paper and of mmengine)
with attention counted.

``count_flops`` counts what runs. DS-Blocks run the global halves of
``conv1``/``conv2`` on the small global grid (exact, see ``DSBlock.forward``),
so they execute fewer MACs than the spec formulation the paper counts;
``count_spec_flops`` adds those MACs back to give the paper's figure.

mmengine's jit-based ``FlopAnalyzer`` skips ``aten::scaled_dot_product_attention``,
which DS-Net uses for every attention, so a handle for it is registered here:
q @ k^T and attn @ v cost B * heads * Lq * Lk * (d_qk + d_v) MACs.
"""

from typing import Any, List, Tuple, Union

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape

from ..models.layers import DSBlock


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of one scaled_dot_product_attention call (softmax not counted)."""
    query, key, value = (get_shape(v) for v in inputs[:3])
    *batch, len_q, dim_qk = query
    len_k, dim_v = key[-2], value[-1]
    batch_size = 1
    for size in batch:
        batch_size *= size
    return batch_size * len_q * len_k * (dim_qk + dim_v)


def count_flops(
    model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]], by_module: bool = False
) -> Union[int, Tuple[int, dict]]:
    """Total MACs of ``model(*inputs)``; also per-module totals if asked."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    total = analyzer.total()
    return (total, analyzer.by_module()) if by_module else total


def commuted_conv_macs(model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]]) -> int:
    """MACs that the DS-Blocks of ``model`` save on ``inputs`` by applying the
    global halves of conv1 and conv2 per grid cell instead of per pixel."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    saved = 0

    def record(block, args):
        nonlocal saved
        batch, channels, height, width = args[0].shape
        grid_h, grid_w = block.global_size(height, width)
        per_position = (channels // 2) * channels  # one half of a 1x1 conv
        saved += 2 * batch * (height * width - grid_h * grid_w) * per_position

    handles = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, DSBlock)
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return saved


def count_spec_flops(model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]]) -> int:
    """MACs of ``model`` as the spec formulates DS-Blocks (the paper's count)."""
    return count_flops(model, inputs) + commuted_conv_macs(model, inputs)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
