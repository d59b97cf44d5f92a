"""DSFPN: FPN's contract, DS-Block placement options, errors."""

import pytest
import torch
from mmdet.models.necks import FPN as MMDetFPN
from mmseg.models.necks import FPN as MMSegFPN

from mmdsnet.analysis import saved_activations_mb
from mmdsnet.models import DSFPN
from mmdsnet.models.layers import DSBlock

IN_CHANNELS = [64, 128, 320, 512]


def pyramid(height=64, width=96, batch=1):
    return [
        torch.randn(batch, c, height // s, width // s) for c, s in zip(IN_CHANNELS, (1, 2, 4, 8))
    ]


def copy_fpn_weights(fpn, dsfpn):
    """Load an mmdet FPN's weights into a DSFPN (extra convs live apart)."""
    source, target = fpn.state_dict(), dsfpn.state_dict()
    num_levels = len(dsfpn.lateral_convs)
    for key in target:
        if key.startswith('extra_convs.'):
            index, rest = key.split('.', 2)[1:]
            target[key] = source[f'fpn_convs.{num_levels + int(index)}.{rest}']
        else:
            target[key] = source[key]
    dsfpn.load_state_dict(target)


FPN_SETTINGS = [
    dict(num_outs=5),  # Mask R-CNN: P2-P5 + max-pooled P6
    dict(num_outs=5, start_level=1, add_extra_convs='on_input'),  # RetinaNet
    dict(num_outs=5, add_extra_convs='on_output', relu_before_extra_convs=True),
    dict(num_outs=6, add_extra_convs='on_lateral'),
    dict(num_outs=3, start_level=1, end_level=3),
    dict(num_outs=4, norm_cfg=dict(type='GN', num_groups=32), no_norm_on_lateral=True),
    dict(num_outs=4, upsample_cfg=dict(scale_factor=2, mode='nearest')),
]


@pytest.mark.parametrize('fpn_cls', [MMDetFPN, MMSegFPN])
@pytest.mark.parametrize('kwargs', FPN_SETTINGS)
def test_without_ds_blocks_equals_fpn(fpn_cls, kwargs):
    if fpn_cls is MMSegFPN and 'end_level' in kwargs:
        pytest.skip('mmseg counts end_level exclusively; DSFPN follows mmdet (inclusive)')
    torch.manual_seed(0)
    fpn = fpn_cls(IN_CHANNELS, 256, **kwargs).eval()
    dsfpn = DSFPN(IN_CHANNELS, 256, num_ds_blocks=0, **kwargs).eval()
    assert sum(p.numel() for p in fpn.parameters()) == sum(p.numel() for p in dsfpn.parameters())
    copy_fpn_weights(fpn, dsfpn)
    inputs = pyramid()
    with torch.no_grad():
        expected, actual = fpn(inputs), dsfpn(inputs)
    assert len(actual) == kwargs['num_outs']
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e)


def test_default_layout_one_block_per_backbone_level():
    neck = DSFPN(IN_CHANNELS, 256, num_outs=5)
    assert sorted(neck.ds_blocks) == ['0', '1', '2', '3']
    blocks = [neck.ds_blocks[str(i)][0] for i in range(4)]
    assert all(isinstance(b, DSBlock) and b.embed_dims == 256 and b.num_heads == 4 for b in blocks)
    # The global stream sits at 1/32 of the image on every level (P2..P5).
    assert [b.global_resize for b in blocks] == [8, 4, 2, 1]
    outs = neck(pyramid(128, 160))
    assert [tuple(o.shape[2:]) for o in outs] == [(128, 160), (64, 80), (32, 40), (16, 20), (8, 10)]
    for level, (h, w) in enumerate([(128, 160), (64, 80), (32, 40), (16, 20)]):
        assert blocks[level].global_size(h, w) == (16, 20)  # image 512x640 / 32


def test_retinanet_layout_starts_at_p3():
    neck = DSFPN(IN_CHANNELS, 256, num_outs=5, start_level=1, add_extra_convs='on_input')
    assert [neck.ds_blocks[k][0].global_resize for k in sorted(neck.ds_blocks)] == [4, 2, 1]


@pytest.mark.parametrize('position', ['pre_fpn_conv', 'post_fpn_conv', 'replace_fpn_conv'])
def test_positions_and_gradients(position):
    neck = DSFPN(
        IN_CHANNELS,
        128,
        num_outs=5,
        ds_position=position,
        ds_levels=(1, 2),
        num_ds_blocks=2,
        ds_num_heads=2,
    )
    assert sorted(neck.ds_blocks) == ['1', '2'] and len(neck.ds_blocks['1']) == 2
    replaced = [isinstance(c, torch.nn.Identity) for c in neck.fpn_convs]
    assert replaced == (
        [False, True, True, False] if position == 'replace_fpn_conv' else [False] * 4
    )
    outs = neck(pyramid(batch=2))
    sum(o.sum() for o in outs).backward()
    for name, param in neck.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_ds_blocks_change_the_output_only_where_placed():
    torch.manual_seed(0)
    plain = DSFPN(IN_CHANNELS, 64, num_outs=4, num_ds_blocks=0, ds_num_heads=1).eval()
    enhanced = DSFPN(
        IN_CHANNELS, 64, num_outs=4, ds_levels=(3,), ds_num_heads=1, ds_norm_cfg=dict(type='BN')
    ).eval()
    enhanced.load_state_dict(plain.state_dict(), strict=False)
    inputs = pyramid()
    with torch.no_grad():
        a, b = plain(inputs), enhanced(inputs)
    for level in range(3):
        torch.testing.assert_close(a[level], b[level])
    assert not torch.allclose(a[3], b[3])


def _neck_run(neck, inputs):
    """Outputs and parameter gradients of one training step."""
    neck.zero_grad()
    outs = neck(inputs)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in neck.named_parameters()}


@pytest.mark.parametrize('ds_norm_cfg', [None, dict(type='BN')])
def test_ds_with_cp_same_outputs_gradients_and_statistics(ds_norm_cfg):
    """Checkpointed DS-Blocks (GroupNorm by default, BN here too) change nothing but memory."""
    kwargs = dict(num_outs=5, ds_num_heads=2, ds_norm_cfg=ds_norm_cfg)
    torch.manual_seed(0)
    plain = DSFPN(IN_CHANNELS, 64, **kwargs).train()
    ckpt = DSFPN(IN_CHANNELS, 64, ds_with_cp=True, **kwargs).train()
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    ckpt.load_state_dict(plain.state_dict())
    assert all(b.with_cp for blocks in ckpt.ds_blocks.values() for b in blocks)
    inputs = pyramid(batch=2)
    (outs_plain, g_plain), (outs_ckpt, g_ckpt) = _neck_run(plain, inputs), _neck_run(ckpt, inputs)
    for a, b in zip(outs_ckpt, outs_plain):
        assert torch.equal(a, b)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-5, atol=1e-6, msg=name)
    buffers = dict(ckpt.named_buffers())
    for name, value in plain.named_buffers():
        assert torch.equal(buffers[name], value), name
        if name.endswith('num_batches_tracked'):
            assert int(value) == 1, name


def test_ds_with_cp_keeps_fewer_activations():
    torch.manual_seed(0)
    plain = DSFPN(IN_CHANNELS, 64, num_outs=5, ds_num_heads=2).train()
    ckpt = DSFPN(IN_CHANNELS, 64, num_outs=5, ds_num_heads=2, ds_with_cp=True).train()
    inputs = (pyramid(128, 160),)
    kept_plain, kept_ckpt = saved_activations_mb(plain, inputs), saved_activations_mb(ckpt, inputs)
    assert kept_plain > 5, kept_plain  # the hooks do see the activations
    assert kept_ckpt < 0.5 * kept_plain, (kept_ckpt, kept_plain)


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(ds_position='middle'), 'ds_position must be one of'),
        (dict(ds_levels=(4,)), 'ds_levels must index'),
        (dict(ds_global_resize=(8, 4)), 'one factor per ds_level'),
        (dict(add_extra_convs='on_top'), 'add_extra_convs must be'),
        (dict(num_outs=3), 'num_outs=3 is smaller'),
        (dict(start_level=4), 'start_level must be'),
        (dict(end_level=7), 'end_level must be'),
        (dict(strides=(8, 16, 32)), 'one increasing positive int per input'),
        (dict(strides=(4, 8, 8, 16)), 'one increasing positive int per input'),
        (dict(ds_global_resize=(8, 4, 0, 1)), 'ds_global_resize entries must be an int >= 1'),
        (dict(ds_drop_path_rate=1.0), r'ds_drop_path_rate must be in \[0, 1\)'),
        (dict(ds_drop_path_rate=-0.5), 'ds_drop_path_rate must be in'),
        (dict(ds_num_heads=0), 'ds_num_heads must be an int >= 1, got 0'),
        (dict(ds_num_heads=3), 'ds_num_heads=3 must divide the 128 channels'),
        (dict(ds_mlp_ratio=0), 'ds_mlp_ratio must be a finite number > 0'),
        (dict(num_ds_blocks=-1), 'num_ds_blocks must be an int >= 0'),
        (dict(in_channels=[64, 0, 320, 512]), 'in_channels entries must be an int >= 1'),
        (dict(out_channels=-256), 'out_channels must be an int >= 1'),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSFPN(**{'in_channels': IN_CHANNELS, 'out_channels': 256, 'num_outs': 5, **kwargs})


def test_bad_inputs():
    neck = DSFPN(IN_CHANNELS, 64, num_outs=4, ds_num_heads=1)
    with pytest.raises(ValueError, match='built for 4 inputs'):
        neck(pyramid()[:3])
    wrong = pyramid()
    wrong[2] = torch.randn(1, 256, 16, 24)
    with pytest.raises(ValueError, match='input 2 has 256 channels, in_channels says 320'):
        neck(wrong)


@pytest.mark.parametrize('train', [False, True])
def test_empty_batch_gives_empty_outputs(train):
    neck = DSFPN(IN_CHANNELS, 64, num_outs=5, ds_num_heads=1).train(train)
    outs = neck(pyramid(batch=0))
    assert [tuple(o.shape) for o in outs] == [(0, 64, 64 // s, 96 // s) for s in (1, 2, 4, 8)] + [
        (0, 64, 4, 6)
    ]


@pytest.mark.parametrize(
    'num_inputs,strides,resize',
    [
        (4, (4, 8, 16, 32), (8, 4, 2, 1)),  # DSNet out_indices=(0, 1, 2, 3)
        (3, (8, 16, 32), (4, 2, 1)),  # DSNet out_indices=(1, 2, 3), RetinaNet
    ],
)
def test_default_strides_put_every_global_grid_at_1_32(num_inputs, strides, resize):
    neck = DSFPN(IN_CHANNELS[-num_inputs:], 64, num_outs=5, ds_num_heads=1)
    assert neck.strides == strides
    assert neck.ds_global_resize == resize
    # Explicit strides: a backbone whose last map has stride 16.
    neck = DSFPN(IN_CHANNELS[:3], 64, num_outs=3, strides=(4, 8, 16), ds_num_heads=1)
    assert neck.ds_global_resize == (8, 4, 2)


def test_shipped_dsfpn_configs_put_every_global_grid_at_1_32(dsfpn_config_path):
    """At the size each config trains on (COCO 1344x800 padded, ADE20K 512x512
    crops, the demo's images), every DS-FPN level's global grid is the image
    over 32, whatever backbone levels the config feeds the neck."""
    from mmengine.config import Config

    from mmdsnet.models import DSNet

    cfg = Config.fromfile(dsfpn_config_path)
    neck_cfg = dict(cfg.model.neck)
    assert neck_cfg.pop('type') == 'DSFPN', 'configs named *dsfpn* use DSFPN'
    backbone = cfg.model.backbone
    strides = [DSNet.strides[i] for i in backbone.get('out_indices', (0, 1, 2, 3))]
    neck = DSFPN(**neck_cfg)
    assert neck.strides == tuple(strides)
    height, width = {'mmdet': (800, 1344), 'mmseg': (512, 512)}[cfg.default_scope]
    grids = []
    for level, blocks in neck.ds_blocks.items():
        stride = neck.strides[neck.start_level + int(level)]
        for block in blocks:
            grids.append(block.global_size(-(-height // stride), -(-width // stride)))
    assert grids and grids == [(height // 32, width // 32)] * len(grids)


def test_fpn_xavier_init_reaches_the_ds_blocks_1x1_convs():
    """DS-FPN's init_cfg (FPN's Xavier on layer='Conv2d') gives the DS-Blocks' conv1/conv2,
    kept per stream, what it gives an nn.Conv2d: zero bias, Xavier-uniform weights (bound
    sqrt(6 / (C + C)), above a default Conv2d's 1 / sqrt(C)), every call once."""
    torch.manual_seed(0)
    neck = DSFPN([64, 128], 64, 2)
    neck.init_weights()
    bound = (6 / (64 + 64)) ** 0.5
    for name in ('conv1', 'conv2'):
        convs = [getattr(block, name) for block in neck.modules() if isinstance(block, DSBlock)]
        assert convs
        for conv in convs:
            assert torch.count_nonzero(conv.bias) == 0, name
            weight = conv.weight.abs().max().item()
            assert 64**-0.5 < weight <= bound, (name, weight)
    before = {k: v.clone() for k, v in neck.state_dict().items()}
    neck.init_weights()  # a second call changes nothing (mmengine warns)
    assert all(torch.equal(before[k], v) for k, v in neck.state_dict().items())
