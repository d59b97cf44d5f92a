"""The dispatch counter of kernel launches, and DS-Net-S's launch budget
against Swin-T (issue 27, item 4): per training step at most 1.5x Swin-T's
in float32 and under bf16 autocast, and at most 1.3x in an eval forward."""

import pytest
import torch

from mmdsnet.analysis.launches import MODES, backbone_launches, count_launches
from mmdsnet.models import DSNet

#: mmdet's Swin-T settings (configs/swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py).
SWIN_T = dict(
    type='SwinTransformer',
    embed_dims=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    window_size=7,
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.2,
    patch_norm=True,
    out_indices=(0, 1, 2, 3),
    with_cp=False,
    convert_weights=True,
)
#: DS-Net-S over Swin-T at most, per mode.
BUDGET = {'train fp32': 1.5, 'train bf16': 1.5, 'eval': 1.3}
#: 224: every Swin stage a whole number of 7x7 windows (no padding operators).
SHAPE = (1, 3, 224, 224)
#: DS-Net-S counts the same at 64, 96 and 224 (as the test below checks for DS-Net-T):
#: 96 costs a quarter of the time.
DSNET_SHAPE = (1, 3, 96, 96)


def test_views_and_allocations_launch_nothing():
    x = torch.randn(4, 6)
    counter = count_launches(
        lambda: (x.view(2, 12), x.t(), x[1:], x.unsqueeze(0), x.detach(), torch.empty(3))
    )
    assert counter.total == 0
    counter = count_launches(lambda: (x.t().contiguous(), x + 1, x.sum(), torch.zeros(3)))
    assert counter.counts == {'clone': 1, 'add': 1, 'sum': 1, 'zeros': 1}


def test_the_backward_counts_and_modes_are_checked():
    linear = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    counter = count_launches(lambda: linear(x).sum().backward())
    # forward addmm and sum; backward the sum's expand (a view), mm for the
    # weight, sum for the bias
    assert counter.counts == {'addmm': 1, 'sum': 2, 'ones_like': 1, 'mm': 1}
    with pytest.raises(ValueError, match='unknown modes'):
        backbone_launches(linear, modes=['train fp16'])


def test_dsnet_counts_do_not_depend_on_the_input_size():
    def counts(size):
        torch.manual_seed(0)
        return backbone_launches(DSNet('tiny', out_indices=(0, 1, 2)), (2, 3, size, size))

    # 64 and 96: every built stage's global grid larger than 1x1 (a one-token grid's
    # degenerate strides can cost one copy more in the backward)
    assert counts(64) == counts(96)


@pytest.mark.usefixtures('mmdet_scope')
def test_dsnet_s_launches_within_budget_of_swin_t():
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    dsnet = backbone_launches(DSNet('small'), DSNET_SHAPE)
    swin = backbone_launches(MODELS.build(SWIN_T), SHAPE)
    ratios = {mode: dsnet[mode] / swin[mode] for mode in MODES}
    over = {mode: round(r, 3) for mode, r in ratios.items() if r > BUDGET[mode]}
    assert not over, f'DS-Net-S {dsnet} against Swin-T {swin}: over budget {over}'
