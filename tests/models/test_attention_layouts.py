"""The layouts that decide whether a fused SDPA kernel can take DS-Net's
attentions, checked on the CPU for every call of DS-Net-T/S/B.

PyTorch's fused CUDA kernels need unit stride along the head dimension, the
other strides aligned to 8 elements (16 bytes in fp16) and a head size that
is a multiple of 8 (flash: at most 256). The CPU's fused kernel needs the
unit stride too, so the CPU choice is a check of the layout the model hands
over. tests/test_gpu.py checks the CUDA choice itself where a GPU is present.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmdsnet.analysis.attention_backends import backend_of_call, describe_sdpa_calls
from mmdsnet.models import DSNet
from mmdsnet.models.layers.fused_attention import cuda_sdpa_backends

CASES = [('tiny', 224, 224), ('small', 224, 224), ('base', 224, 224), ('tiny', 800, 1344)]


@pytest.mark.parametrize('arch,height,width', CASES)
def test_every_attention_call_has_a_fused_kernel_layout(arch, height, width):
    model = DSNet(arch, drop_path_rate=0.0)
    model.eval()
    calls = describe_sdpa_calls(model, torch.randn(1, 3, height, width), with_eligibility=False)
    blocks = sum(model.arch_settings[arch]['depths'])
    assert len(calls) == 3 * blocks
    for call in calls:
        assert call['last_dim_contiguous'], call
        assert call['head_dims'] % 8 == 0 and call['head_dims'] <= 256, call
        for strides in call['strides']:
            assert all(s % 8 == 0 for s in strides[:-1]), call
        assert call['backend'] == 'flash', call  # the CPU's fused kernel, not math


def test_the_recorder_sees_a_layout_that_falls_back_to_math():
    """A head dimension with a stride other than 1 is reported as math."""
    q = torch.randn(1, 2, 64, 32).transpose(-1, -2).contiguous().transpose(-1, -2)
    assert q.stride(-1) != 1
    assert backend_of_call(q, q, q) == 'math'

    class StridedAttention(torch.nn.Module):
        num_heads = 2

        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    calls = describe_sdpa_calls(torch.nn.Sequential(StridedAttention()), q)
    assert [(c['module'], c['backend'], c['last_dim_contiguous']) for c in calls] == [
        ('0', 'math', False)
    ]
    assert calls[0]['eligible'] == {'flash': False, 'math': True}


def test_cuda_backend_choice_leaves_out_cudnn_and_keeps_a_callers_restriction():
    """What DSBlock's attention enables on CUDA (the flags are readable without a GPU)."""
    flash, efficient, math = (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    )
    assert cuda_sdpa_backends() == [flash, efficient, math]
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, flash]):
        assert cuda_sdpa_backends() == [flash]
    with sdpa_kernel([math]):
        assert cuda_sdpa_backends() == [math]
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        assert cuda_sdpa_backends() == []  # cuDNN alone: the caller's choice is used
