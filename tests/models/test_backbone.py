"""DSNet backbone: architecture, knobs, errors, numerics against the explicit
formulation, parameter counts and FLOPs."""

import math

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdsnet.analysis import commuted_conv_macs, count_flops, count_spec_flops, saved_activations_mb
from mmdsnet.checkpoint import dsnet_convert
from mmdsnet.models import DSNet
from mmdsnet.models.layers import DSBlock
from mmdsnet.models.layers.ds_block import StreamConv
from mmdsnet.testing import randomize_norm_stats, reference_for
from mmdsnet.testing.reference_dsnet import ReferenceBlock

CHANNELS = (64, 128, 320, 512)
STRIDES = (4, 8, 16, 32)
ARCH = dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 1), num_heads=(1, 2, 5, 8))


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
@pytest.mark.parametrize('size', [(224, 224), (512, 512), (511, 511), (112, 137)])
def test_output_shapes(arch, size):
    model = DSNet(arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == 4
    for out, channels, stride in zip(outs, CHANNELS, STRIDES):
        assert out.shape == (1, channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert torch.isfinite(out).all()


def test_odd_detection_size_and_alias():
    model = DSNet('t').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 513, 769))
    assert [tuple(o.shape[2:]) for o in outs] == [(129, 193), (65, 97), (33, 49), (17, 25)]


@pytest.mark.parametrize(
    'arch,expected', [('tiny', 10_020_288), ('small', 22_490_528), ('base', 48_829_728)]
)
def test_parameter_counts_match_public_implementation(arch, expected):
    model = DSNet(arch)
    assert n_params(model) == expected
    # With the 1000-way head and final BN (the paper's 10.5M / 23.0M / 49.3M).
    with_head = expected + 512 * 1000 + 1000 + 2 * 512
    assert n_params(reference_for(arch)) == with_head


@pytest.mark.parametrize('arch,paper_m', [('tiny', 9.1), ('small', 19.6)])
def test_parameter_counts_without_alignment(arch, paper_m):
    model = DSNet(arch, with_alignment=False)
    with_head = n_params(model) + 512 * 1000 + 1000 + 2 * 512
    assert round(with_head / 1e6, 1) == paper_m
    assert not any('cross' in name or 'fuse' in name for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    'arch,alignment,paper_gflops',
    [
        ('tiny', True, 1.8),
        ('small', True, 3.5),
        ('base', True, 8.4),
        ('tiny', False, 1.6),
        ('small', False, 3.0),
    ],
)
def test_flops_at_224_match_paper(arch, alignment, paper_gflops):
    """The paper counts the spec formulation; DSNet executes exactly that
    minus the global halves of conv1/conv2 moved onto the small grid."""
    x = torch.randn(1, 3, 224, 224)
    reference_flops = count_flops(reference_for(arch, with_alignment=alignment).eval(), x)
    assert abs(reference_flops / 1e9 - paper_gflops) / paper_gflops < 0.03, reference_flops

    model = DSNet(arch, with_alignment=alignment).eval()
    executed = count_flops(model, x)
    settings = DSNet.parse_arch(arch)
    moved = 0
    for i, (channels, depth) in enumerate(zip(settings['embed_dims'], settings['depths'])):
        side = 224 // DSNet.strides[i]
        grid = max(1, side // (8, 4, 2, 2)[i])
        # conv1's global outputs and conv2's global inputs: C/2 x C MACs per
        # pixel each, now per grid cell instead.
        moved += depth * 2 * (side * side - grid * grid) * (channels // 2) * channels
    assert commuted_conv_macs(model, x) == moved
    assert executed < reference_flops
    # What remains differs only in how resampling and the head are counted.
    spec_flops = count_spec_flops(model, x)
    assert abs(spec_flops - reference_flops) < 0.002 * reference_flops, (
        spec_flops,
        reference_flops,
    )


def test_attention_is_counted_in_flops():
    model = DSNet('tiny').eval()
    _, by_module = count_flops(model, torch.randn(1, 3, 224, 224), by_module=True)
    block = model.stages[0][0]
    # Stage 1 at 224: 3136 local and 49 global tokens, 1 head of 32 channels.
    attention = 49 * 49 * 64 + 2 * 3136 * 49 * 64
    linear_and_conv = sum(
        by_module[f'stages.0.0.{name}']
        for name in (
            'channel_up',
            'cross_channel_up_sa',
            'fuse_channel_conv',
            'fuse_channel_sa',
            'cross_channel_up_conv',
            'conv1',
            'conv2',
            'pos_embed',
            'conv',
            'mlp',
        )
    )
    norms = sum(
        by_module[f'stages.0.0.{name}']
        for name, m in block.named_children()
        if isinstance(m, (nn.LayerNorm, _BatchNorm))
    )
    assert by_module['stages.0.0'] - linear_and_conv - norms >= attention


@pytest.mark.parametrize('out_indices', [(0,), (1, 3), (0, 1, 2), (2, 3)])
def test_out_indices(out_indices):
    model = DSNet('tiny', out_indices=out_indices).eval()
    assert model.out_channels == [CHANNELS[i] for i in out_indices]
    assert DSNet.out_channels_of('tiny', out_indices) == model.out_channels
    # Stages after the last requested output are not built.
    assert len(model.stages) == max(out_indices) + 1
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == model.out_channels
    assert [o.shape[2] for o in outs] == [64 // STRIDES[i] for i in out_indices]


@pytest.mark.parametrize(
    'kwargs,error,match',
    [
        (dict(arch='huge'), ValueError, "accepted: \\['base', 'small', 'tiny'\\]"),
        (
            dict(arch=dict(embed_dims=(64, 128, 320, 512), depths=(1, 1, 1))),
            ValueError,
            'needs keys',
        ),
        (dict(arch=3), TypeError, 'str or a dict'),
        (dict(out_indices=(0, 4)), ValueError, 'out_indices must be'),
        (dict(out_indices=(2, 1)), ValueError, 'increasing'),
        (dict(out_indices=()), ValueError, 'out_indices'),
        (dict(frozen_stages=5), ValueError, 'frozen_stages must be an int in -1..4'),
        (dict(frozen_stages=-2), ValueError, 'frozen_stages'),
        (dict(global_resize=(8, 4, 2)), ValueError, 'global_resize'),
        # Every rate is a probability of dropping: 0 <= p < 1.
        (dict(drop_path_rate=1.0), ValueError, r'DSNet drop_path_rate must be in \[0, 1\)'),
        (dict(drop_path_rate=1.5), ValueError, 'drop_path_rate must be in'),
        (dict(drop_path_rate=-0.1), ValueError, 'drop_path_rate must be in'),
        (dict(drop_path_rate=float('nan')), ValueError, 'got nan'),
        (dict(attn_drop_rate=-0.1), ValueError, 'DSNet attn_drop_rate must be in'),
        (dict(drop_rate=1.0), ValueError, 'DSNet drop_rate must be in'),
        (dict(drop_rate='0.1'), TypeError, 'drop_rate must be a float'),
        # arch dicts are validated in full at construction.
        (
            dict(arch=dict(ARCH, num_heads=(0, 2, 5, 8))),
            ValueError,
            r'arch num_heads\[0\] must be an int >= 1, got 0',
        ),
        (dict(arch=dict(ARCH, num_heads=(1, -2, 5, 8))), ValueError, r'num_heads\[1\]'),
        (
            dict(arch=dict(ARCH, num_heads=(1, 2, 3, 8))),
            ValueError,
            r'num_heads\[2\]=3 must divide the 160 channels',
        ),
        (dict(arch=dict(ARCH, depths=(2, 0, 2, 1))), ValueError, r'arch depths\[1\] must be'),
        (dict(arch=dict(ARCH, depths=(2, -1, 2, 1))), ValueError, r'depths\[1\]'),
        (dict(arch=dict(ARCH, embed_dims=(64, 127, 320, 512))), ValueError, 'must be even'),
        (
            dict(arch=dict(ARCH, mlp_ratio=0)),
            ValueError,
            'arch mlp_ratio must be a finite number > 0',
        ),
        (dict(arch=dict(ARCH, depths=5)), ValueError, r"arch\['depths'\] must be a list of 4"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        DSNet(**{'arch': 'tiny', **kwargs})


@pytest.mark.parametrize('train', [False, True])
def test_empty_batch_gives_empty_outputs(train):
    model = DSNet('tiny').train(train)
    outs = model(torch.randn(0, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (0, c, -(-64 // s), -(-96 // s)) for c, s in zip(CHANNELS, STRIDES)
    ]


def test_smallest_trainable_input_with_batch_norm():
    """With BN in training each stage-4 channel needs 2 values: batch * ceil(H/32) *
    ceil(W/32) >= 2. Eval mode and norm_eval=True take any H, W >= 32."""
    model = DSNet('tiny').train()
    with pytest.raises(ValueError, match='needs at least 2 values per channel in stage 4'):
        model(torch.randn(1, 3, 32, 32))
    assert model(torch.randn(2, 3, 32, 32))[3].shape == (2, 512, 1, 1)
    assert model(torch.randn(1, 3, 33, 32))[3].shape == (1, 512, 2, 1)
    assert DSNet('tiny', norm_eval=True).train()(torch.randn(1, 3, 32, 32))[3].shape[0] == 1
    assert model.eval()(torch.randn(1, 3, 32, 32))[3].shape == (1, 512, 1, 1)
    # A backbone that stops at stage 2 has 4x4 values per image there.
    assert DSNet('tiny', out_indices=(0, 1)).train()(torch.randn(1, 3, 32, 32))[1].shape[0] == 1


@pytest.mark.parametrize(
    'shape,match',
    [
        ((1, 3, 31, 64), 'H and W >= 32'),
        ((1, 3, 64, 16), 'H and W >= 32'),
        ((1, 4, 64, 64), 'built for 3 input channels, got 4'),
        ((3, 64, 64), r'expects a \(B, C, H, W\)'),
    ],
)
def test_bad_inputs_raise(shape, match):
    model = DSNet('tiny').eval()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


def test_in_channels():
    model = DSNet('tiny', in_channels=1).eval()
    assert model(torch.randn(1, 1, 32, 32))[0].shape == (1, 64, 8, 8)


def _bn_states(module):
    return [m.training for m in module.modules() if isinstance(m, _BatchNorm)]


@pytest.mark.parametrize('frozen_stages', [0, 1, 2, 4])
def test_frozen_stages(frozen_stages):
    model = DSNet('tiny', frozen_stages=frozen_stages)
    model.train()
    frozen_modules = [model.patch_embeds[0]]
    for i in range(frozen_stages):
        frozen_modules += [model.patch_embeds[i], model.stages[i]]
    frozen_ids = {id(p) for m in frozen_modules for p in m.parameters()}
    for module in frozen_modules:
        assert not any(_bn_states(module)), 'frozen BN must stay in eval after train()'
    output = model(torch.randn(2, 3, 64, 64))[-1].sum()
    if output.requires_grad:  # False when every stage is frozen
        output.backward()
    for name, param in model.named_parameters():
        if id(param) in frozen_ids:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad, name
            assert param.grad is not None, name
    # Stages after the frozen ones still train, BN included.
    if frozen_stages < 4:
        assert all(_bn_states(model.stages[frozen_stages]))


def test_frozen_stages_reapplied_after_train_toggle():
    model = DSNet('tiny', frozen_stages=2)
    model.eval()
    model.train()
    assert not any(_bn_states(model.stages[1]))
    assert all(_bn_states(model.stages[2]))


def test_norm_eval_keeps_statistics():
    model = DSNet('tiny', norm_eval=True)
    model.train()
    assert not any(_bn_states(model))
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    model(torch.randn(2, 3, 64, 64))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    # LayerNorm and dropout modules are still in training mode.
    assert model.stages[0][0].norm_sa1.training


def test_norm_cfg_syncbn_and_gn():
    model = DSNet('tiny', norm_cfg=dict(type='SyncBN'))
    assert isinstance(model.stages[0][0].norm1, nn.SyncBatchNorm)
    model = DSNet('tiny', norm_cfg=dict(type='GN', num_groups=8)).eval()
    assert isinstance(model.stages[0][0].norm_conv1, nn.GroupNorm)
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 64, 16, 16)


def _grads(model, x):
    model.zero_grad()
    sum(o.sum() for o in model(x)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_with_cp_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = DSNet('tiny', drop_path_rate=0.0)
    ckpt = DSNet('tiny', drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    plain.train(), ckpt.train()
    x = torch.randn(2, 3, 64, 64)
    g_plain, g_ckpt = _grads(plain, x), _grads(ckpt, x.clone().requires_grad_())
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-4, atol=1e-5)
    # The recomputation must not update BN statistics a second time.
    s_plain, s_ckpt = plain.state_dict(), ckpt.state_dict()
    for key in s_plain:
        torch.testing.assert_close(s_ckpt[key], s_plain[key], msg=key)


def test_with_cp_cuts_saved_activations_by_at_least_40_percent():
    """The performance target: checkpointing every block keeps only block inputs."""
    torch.manual_seed(0)
    plain = DSNet('tiny', drop_path_rate=0.0).train()
    ckpt = DSNet('tiny', drop_path_rate=0.0, with_cp=True).train()
    x = torch.randn(1, 3, 256, 320)
    kept_plain = saved_activations_mb(plain, x)
    kept_ckpt = saved_activations_mb(ckpt, x)
    assert kept_plain > 20, kept_plain  # sanity: the hooks do see the activations
    assert kept_ckpt < 0.6 * kept_plain, (kept_ckpt, kept_plain)


def _block_run(block, x):
    """Output, input gradient and parameter gradients of one training step."""
    x = x.detach().clone().requires_grad_()
    block.zero_grad()
    out = block(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


@pytest.mark.parametrize('norm', ['BN', 'GN'])
def test_dsblock_with_cp_same_output_gradients_and_statistics(norm):
    """Checkpointing lives in the block: it recomputes, changing nothing but memory."""
    norm_cfg = dict(type='BN') if norm == 'BN' else dict(type='GN', num_groups=4)
    torch.manual_seed(0)
    plain = DSBlock(32, 2, 4, norm_cfg=norm_cfg).train()
    ckpt = DSBlock(32, 2, 4, norm_cfg=norm_cfg, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 32, 16, 24).contiguous(memory_format=torch.channels_last)
    out_plain, dx_plain, g_plain = _block_run(plain, x)
    out_ckpt, dx_ckpt, g_ckpt = _block_run(ckpt, x)
    assert torch.equal(out_ckpt, out_plain)
    torch.testing.assert_close(dx_ckpt, dx_plain, rtol=1e-5, atol=1e-6)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-5, atol=1e-6, msg=name)
    # Buffers (BN running statistics, batch counts) updated by the forward only.
    buffers = dict(ckpt.named_buffers())
    assert (norm == 'BN') == bool(buffers)
    for name, value in plain.named_buffers():
        assert torch.equal(buffers[name], value), name
        if name.endswith('num_batches_tracked'):
            assert int(value) == 1, name
    # It checkpoints while its input needs a gradient (then only that input
    # is kept); the blocks of a frozen stage get inputs that need none.
    kept_plain = saved_activations_mb(plain, x)
    assert saved_activations_mb(ckpt, x.requires_grad_()) < 0.2 * kept_plain
    assert saved_activations_mb(ckpt, x.detach()) == kept_plain


def test_dsnet_with_cp_is_the_blocks_with_cp():
    model = DSNet(ARCH, with_cp=True)
    assert all(block.with_cp for stage in model.stages for block in stage)
    assert not any(block.with_cp for stage in DSNet(ARCH).stages for block in stage)
    assert list(model.state_dict()) == list(DSNet(ARCH).state_dict())


@pytest.mark.parametrize('with_alignment', [True, False])
def test_every_parameter_gets_a_gradient(with_alignment):
    # Seeded: stochastic depth drops a block's residual for both images now
    # and then (then its norm really gets no gradient); seed 2 drops none of
    # the 2 x 9 x 2 residuals for both images (one draw per forward).
    torch.manual_seed(2)
    model = DSNet('tiny', with_alignment=with_alignment, drop_path_rate=0.2, attn_drop_rate=0.1)
    model.train()
    grads = _grads(model, torch.randn(2, 3, 96, 64))
    for name, _ in model.named_parameters():
        assert grads[name].abs().sum() > 0, f'{name} gets no gradient'


def test_drop_path_rate_is_linear_over_all_blocks():
    model = DSNet('small', drop_path_rate=0.3)
    rates = [
        block.drop_path.drop_prob if hasattr(block.drop_path, 'drop_prob') else 0.0
        for stage in model.stages
        for block in stage
    ]
    assert len(rates) == 18
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 18), rtol=0, atol=1e-7)


def test_attn_drop_rate_active_only_in_training():
    model = DSNet('tiny', attn_drop_rate=0.5, drop_path_rate=0.0, norm_eval=True)
    x = torch.randn(1, 3, 64, 64)
    model.train()
    torch.manual_seed(1)
    a = model(x)[0]
    torch.manual_seed(2)
    b = model(x)[0]
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x)[0])


@pytest.mark.parametrize('arch,channels_last', [('tiny', True), ('small', True), ('tiny', False)])
@pytest.mark.parametrize('with_alignment', [True, False])
def test_matches_explicit_reference_formulation(arch, channels_last, with_alignment):
    torch.manual_seed(0)
    reference = reference_for(arch, with_alignment=with_alignment).eval()
    randomize_norm_stats(reference)
    model = DSNet(arch, with_alignment=with_alignment, channels_last=channels_last).eval()
    model.load_state_dict(dsnet_convert(reference.state_dict()), strict=True)
    for size in [(224, 224), (256, 320)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, actual = reference.features(x), model(x)
        for e, a in zip(expected, actual):
            assert a.is_contiguous(), 'outputs must be standard NCHW'
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_fused_block_matches_explicit_block_at_detection_resolution(memory_format):
    """Stage-1 block at 800x1344 input: 67,200 local and 1,050 global tokens."""
    torch.manual_seed(0)
    reference = ReferenceBlock(64, 1, 8).eval()
    randomize_norm_stats(reference)
    block = DSBlock(64, 1, 8).eval()
    block.load_state_dict(reference.state_dict())
    x = torch.randn(1, 64, 200, 336)
    with torch.no_grad():
        actual = block(x.contiguous(memory_format=memory_format))
        torch.testing.assert_close(actual, reference(x), rtol=1e-4, atol=1e-4)
    assert block.global_size(200, 336) == (25, 42)


def test_global_grid_sizes():
    model = DSNet('tiny')
    grids = [stage[0].global_size(800 // s, 1344 // s) for stage, s in zip(model.stages, STRIDES)]
    assert grids == [(25, 42), (25, 42), (25, 42), (12, 21)]
    model = DSNet('tiny', global_resize=(8, 4, 2, 1))
    assert model.stages[3][0].global_size(25, 42) == (25, 42)


@pytest.mark.parametrize(
    'args,kwargs,match',
    [
        ((64, 3, 8), {}, 'num_heads=3 must divide the 32 channels'),
        ((64, 0, 8), {}, 'DSBlock num_heads must be an int >= 1, got 0'),
        ((63, 1, 8), {}, 'must be even'),
        ((64, 1, 0), {}, 'DSBlock global_resize must be an int >= 1'),
        ((64, 1, 8), dict(mlp_ratio=0.0), 'DSBlock mlp_ratio must be a finite number > 0'),
        ((64, 1, 8), dict(drop_path_rate=1.0), r'DSBlock drop_path_rate must be in \[0, 1\)'),
        ((64, 1, 8), dict(attn_drop_rate=-0.1), 'DSBlock attn_drop_rate must be in'),
        ((64, 1, 8), dict(drop_rate=float('inf')), 'DSBlock drop_rate must be in'),
    ],
)
def test_dsblock_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSBlock(*args, **kwargs)


@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('with_alignment', [True, False])
def test_attention_never_falls_back_to_the_math_kernel(with_alignment, channels_last):
    """Every attention call must be served by a fused kernel: the math
    fallback would materialise the local-to-global maps (282 MB per head for
    one stage-1 block at 800x1344)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = DSNet('tiny', with_alignment=with_alignment, channels_last=channels_last).eval()
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    with torch.no_grad(), sdpa_kernel(fused):
        outs = model(torch.randn(1, 3, 96, 128))
    assert len(outs) == 4


def test_training_gradients_match_explicit_reference():
    """The commuted conv1/conv2 halves must give the spec's gradients too
    (train-mode BN, batch statistics)."""
    torch.manual_seed(0)
    reference = reference_for('tiny').train()
    randomize_norm_stats(reference)
    model = DSNet('tiny', drop_path_rate=0.0).train()
    model.load_state_dict(dsnet_convert(reference.state_dict()), strict=True)
    x = torch.randn(2, 3, 128, 160)
    weights = [torch.randn_like(o) for o in reference.features(x)]
    sum((o * w).sum() for o, w in zip(reference.features(x), weights)).backward()
    sum((o * w).sum() for o, w in zip(model(x), weights)).backward()
    # By state-dict name: conv1/conv2's per-stream gradients packed as their weights are.
    ours = {name: param.grad for name, param in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, StreamConv):
            StreamConv.pack_state(module, ours, f'{name}.')
    for their_name, their_param in reference.named_parameters():
        if their_param.grad is None:  # classifier head and final norm
            continue
        our_name = next(iter(dsnet_convert({their_name: their_param})))
        # Gradients reach a few hundred here: compare relative to the largest.
        scale = their_param.grad.abs().max().item()
        torch.testing.assert_close(
            ours[our_name], their_param.grad, rtol=1e-4, atol=1e-5 * scale, msg=our_name
        )
