"""Issue 20, items 8 and 9: switches, ints and norms checked at construction,
and DS-FPN's GroupNorm on a 1x1 map."""

import pytest
import torch

from mmdsnet.models.backbones.dsnet import DSNet
from mmdsnet.models.layers import DSBlock
from mmdsnet.models.necks.ds_fpn import DSFPN

ARCH = dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
FPN_ARGS = dict(in_channels=[8, 16, 32, 64], out_channels=64, num_outs=5)


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(with_alignment='False'), 'DSNet with_alignment must be True or False'),
        (dict(norm_eval='no'), 'DSNet norm_eval must be True or False'),
        (dict(with_cp=1), 'DSNet with_cp must be True or False'),
        (dict(channels_last='yes'), 'DSNet channels_last must be True or False'),
        (dict(out_indices=(True,)), 'out_indices must be increasing, unique stage indices'),
        (dict(frozen_stages=True), 'frozen_stages must be an int in -1..4'),
        (dict(in_channels=True), 'in_channels must be an int >= 1'),
        (dict(global_resize=(8, 4, 2, True)), 'global_resize must be 4 positive ints'),
        (dict(arch=dict(ARCH, mlp_ratio=0.001)), 'mlp_ratio=0.001 gives a hidden width'),
        (dict(norm_cfg=dict(type='LN')), "norm_cfg type 'LN' does not normalise NCHW"),
        (dict(norm_cfg=dict(type='BN1d')), 'accepted: BN, BN2d, SyncBN, GN, IN, IN2d'),
    ],
)
def test_dsnet_refuses_bad_switches_and_ints(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        DSNet(**{'arch': ARCH, **kwargs})


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(relu_before_extra_convs='False'), 'relu_before_extra_convs must be True or False'),
        (dict(no_norm_on_lateral='no'), 'no_norm_on_lateral must be True or False'),
        (dict(ds_with_alignment='False'), 'ds_with_alignment must be True or False'),
        (dict(ds_with_cp='no'), 'ds_with_cp must be True or False'),
        (dict(in_channels=True), 'in_channels must be a non-empty list'),
        (dict(ds_levels=(1, 1)), 'ds_levels must index the 4 backbone levels'),
        (dict(ds_levels=(2, 0)), 'increasing, unique ints'),
        (dict(ds_levels=(True,)), 'ds_levels must index'),
        (dict(num_outs=True), 'num_outs must be an int'),
        (dict(start_level=False), 'start_level must be an int'),
        (dict(ds_mlp_ratio=0.001), 'ds_mlp_ratio=0.001 gives a hidden width'),
        (dict(ds_norm_cfg=dict(type='LN')), "ds_norm_cfg type 'LN' does not normalise"),
        (dict(norm_cfg=dict(type='LN')), "norm_cfg type 'LN' does not normalise"),
    ],
)
def test_dsfpn_refuses_bad_switches_and_ints(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        DSFPN(**{**FPN_ARGS, **kwargs})


def test_dsblock_refuses_bad_switch_ratio_and_norm():
    with pytest.raises(TypeError, match='DSBlock with_alignment must be True or False'):
        DSBlock(16, 1, 2, with_alignment='False')
    with pytest.raises(TypeError, match='DSBlock with_cp must be True or False'):
        DSBlock(16, 1, 2, with_cp=1)
    with pytest.raises(ValueError, match=r'must be >= 0.0625 for 16 channels'):
        DSBlock(16, 1, 2, mlp_ratio=0.06)
    with pytest.raises(ValueError, match='accepted: BN, BN2d, SyncBN, GN, IN, IN2d'):
        DSBlock(16, 1, 2, norm_cfg=dict(type='LN'))


@pytest.mark.parametrize(
    'norm_cfg',
    [
        dict(type='BN'),
        dict(type='SyncBN'),
        dict(type='GN', num_groups=4),
        dict(type='IN'),
        dict(type=torch.nn.BatchNorm2d),
    ],
)
def test_dsblock_accepted_norms_run_on_nchw_maps(norm_cfg):
    """Every accepted norm type builds and runs, in training and in eval, and the
    smallest accepted mlp_ratio gives a working one-channel FFN."""
    block = DSBlock(16, 1, 2, mlp_ratio=1 / 16, norm_cfg=norm_cfg)
    x = torch.randn(2, 16, 8, 8)
    assert block.train()(x).shape == x.shape
    assert block.eval()(x).shape == x.shape


def test_dsfpn_runs_in_eval_on_a_32x32_image():
    """At 32x32 the stride-32 map is 1x1; with out_channels=64 each GroupNorm
    group of the blocks' half-width norms (32 channels, 32 groups) holds a
    single value. Such a group normalises to 0, so the output is the bias."""
    neck = DSFPN(**FPN_ARGS).eval()
    feats = [torch.randn(1, c, 32 // s, 32 // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32])]
    with torch.no_grad():
        outs = neck(feats)
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    assert all(torch.isfinite(o).all() for o in outs)
    # Training with one image works as well, and the gradient reaches the bias.
    neck.train()
    sum(o.sum() for o in neck(feats)).backward()
    norm = neck.ds_blocks['3'][0].norm_conv1
    assert norm.bias.grad is not None and torch.isfinite(norm.bias.grad).all()


def test_dsfpn_with_groupnorm_fpn_convs_runs_in_eval_on_a_32x32_image():
    """The FPN convs' own GroupNorm (norm_cfg, one channel per group here) on
    the 1x1 stride-32 level and the extra levels."""
    neck = DSFPN(
        **{**FPN_ARGS, 'add_extra_convs': 'on_output'},
        norm_cfg=dict(type='GN', num_groups=64),
        num_ds_blocks=0,
    ).eval()
    feats = [torch.randn(1, c, 32 // s, 32 // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32])]
    with torch.no_grad():
        outs = neck(feats)
    assert [tuple(o.shape[2:]) for o in outs][3:] == [(1, 1), (1, 1)]


def test_dsnet_and_dsfpn_accept_valid_switches():
    DSNet(arch=ARCH, with_alignment=False, norm_eval=True, with_cp=True, channels_last=False)
    DSFPN(**FPN_ARGS, relu_before_extra_convs=True, no_norm_on_lateral=True, ds_levels=[0, 2])
