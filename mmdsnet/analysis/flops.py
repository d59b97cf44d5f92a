"""FLOPs (multiply-accumulates, the convention of the paper and of mmengine)
with attention counted.

mmengine's jit-based ``FlopAnalyzer`` skips ``aten::scaled_dot_product_attention``,
which DS-Net uses for every attention, so a handle for it is registered here:
q @ k^T and attn @ v cost B * heads * Lq * Lk * (d_qk + d_v) MACs.
"""
from typing import Any, List, Tuple, Union

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of one scaled_dot_product_attention call (softmax not counted)."""
    query, key, value = (get_shape(v) for v in inputs[:3])
    *batch, len_q, dim_qk = query
    len_k, dim_v = key[-2], value[-1]
    batch_size = 1
    for size in batch:
        batch_size *= size
    return batch_size * len_q * len_k * (dim_qk + dim_v)


def count_flops(model: nn.Module,
                inputs: Union[torch.Tensor, Tuple[Any, ...]],
                by_module: bool = False) -> Union[int, Tuple[int, dict]]:
    """Total MACs of ``model(*inputs)``; also per-module totals if asked."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    total = analyzer.total()
    return (total, analyzer.by_module()) if by_module else total


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters()
               if p.requires_grad or not trainable_only)


