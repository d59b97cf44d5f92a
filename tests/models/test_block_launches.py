"""The DS-Block's fewer launches keep its outputs, gradients and state dict:
per-stream ``conv1``/``conv2`` parameters saved as one ``nn.Conv2d`` each,
BatchNorm folded into the 1x1 convolutions in inference (cached, invalidated),
one packed cast of its weights under autocast, stochastic depth in the
residual sums."""

import copy

import pytest
import torch
import torch.nn as nn

from mmdsnet.models.backbones.dsnet import DSNet
from mmdsnet.models.layers import DSBlock
from mmdsnet.models.layers import ds_block as ds_block_module
from mmdsnet.models.layers.ds_block import StreamConv


def make_block(with_alignment=True, **kwargs):
    torch.manual_seed(0)
    block = DSBlock(16, 2, 2, with_alignment=with_alignment, **kwargs)
    # Non-trivial BN statistics and affine parameters, as after training.
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return block


def block_input(batch=2, size=8):
    torch.manual_seed(1)
    return torch.randn(batch, 16, size, size).contiguous(memory_format=torch.channels_last)


PUBLIC_KEYS = {'conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias'}


def test_state_dict_keeps_the_public_conv_keys():
    block = make_block()
    state = block.state_dict()
    assert PUBLIC_KEYS <= set(state)
    assert not [k for k in state if 'local_' in k or 'global_' in k]
    assert state['conv1.weight'].shape == state['conv2.weight'].shape == (16, 16, 1, 1)
    assert state['conv1.bias'].shape == state['conv2.bias'].shape == (16,)
    # conv1: global output channels first; conv2: local input channels first.
    assert torch.equal(state['conv1.weight'][:8], block.conv1.global_weight)
    assert torch.equal(state['conv1.bias'][8:], block.conv1.local_bias)
    assert torch.equal(state['conv2.weight'][:, :8], block.conv2.local_weight)
    assert torch.equal(state['conv2.bias'], block.conv2.local_bias)


def test_state_dict_round_trip_and_nn_conv2d_values():
    """A state dict written with one nn.Conv2d per conv (the public and the
    earlier layout of this package) loads into the per-stream parameters."""
    block, other = make_block(), make_block()
    state = block.state_dict()
    torch.manual_seed(5)
    state['conv1.weight'] = torch.randn(16, 16, 1, 1)
    state['conv2.weight'] = torch.randn(16, 16, 1, 1)
    state['conv2.bias'] = torch.randn(16)
    assert other.load_state_dict(state, strict=True).missing_keys == []
    for key in PUBLIC_KEYS:
        assert torch.equal(other.state_dict()[key], state[key])
    assert torch.equal(other.conv1.weight, state['conv1.weight'])
    # The same random state gives an nn.Conv2d's initial values.
    torch.manual_seed(3)
    conv = nn.Conv2d(16, 16, 1)
    torch.manual_seed(3)
    stream = StreamConv(16, split='out')
    assert torch.equal(stream.weight, conv.weight) and torch.equal(stream.bias, conv.bias)


def test_wrong_conv_shape_is_reported_by_name():
    block = make_block()
    state = block.state_dict()
    state['conv1.weight'] = torch.zeros(8, 16, 1, 1)
    with pytest.raises(RuntimeError, match=r'size mismatch for conv1\.weight'):
        block.load_state_dict(state)


def test_stream_conv_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="split must be 'in' or 'out'"):
        StreamConv(8, split='both')


@pytest.mark.parametrize('with_alignment', [True, False])
def test_folded_inference_equals_the_unfolded_block(with_alignment):
    """Eval mode without autograd folds; with autograd it does not: the two
    agree to float rounding (float64: to 1e-12)."""
    block = make_block(with_alignment).double().eval()
    x = block_input().double()
    with torch.no_grad():
        folded = block(x)
        assert block.folded_weights() is not None
    with torch.enable_grad():
        assert block.folded_weights() is None
        unfolded = block(x)
    torch.testing.assert_close(folded, unfolded.detach(), rtol=1e-12, atol=1e-12)


def test_folded_weights_follow_parameter_and_statistic_changes():
    block = make_block().eval()
    x = block_input()
    with torch.no_grad():
        first = block.folded_weights()
        assert block.folded_weights() is first  # cached
        for change in (
            lambda: block.norm1.running_mean.add_(0.3),  # statistics
            lambda: block.mlp.fc1.weight.mul_(1.1),  # an optimizer step
            lambda: block.load_state_dict(make_block().state_dict()),
        ):
            change()
            folded = block(x)
            with torch.enable_grad():
                unfolded = block(x)
            torch.testing.assert_close(folded, unfolded.detach(), rtol=1e-5, atol=1e-5)
        assert block.folded_weights() is not first


def test_no_folding_in_training_mode_or_without_batch_norm():
    block = make_block()
    with torch.no_grad():
        assert block.train().folded_weights() is None
        block.eval()
        block.norm2.train()  # a BN in training mode uses batch statistics
        assert block.folded_weights() is None
    torch.manual_seed(0)
    gn_block = DSBlock(16, 2, 2, norm_cfg=dict(type='GN', num_groups=4)).eval()
    with torch.no_grad():
        assert gn_block.folded_weights() is None


def test_packed_autocast_cast_equals_the_per_layer_casts(monkeypatch):
    """Under bf16 autocast the block casts its weights in one operator; the
    output and every gradient are those of autocast's own per-layer casts."""
    block = make_block(drop_path_rate=0.0)
    reference = copy.deepcopy(block)
    x = block_input()

    def run(model):
        inp = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(inp)
        out.float().square().mean().backward()
        return out, inp.grad, {n: p.grad for n, p in model.named_parameters()}

    out, grad_in, grads = run(block)
    monkeypatch.setattr(ds_block_module, 'cast_for_autocast', lambda weights, x: weights)
    ref_out, ref_grad_in, ref_grads = run(reference)
    assert out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(grad_in, ref_grad_in, rtol=0, atol=0)
    for name, grad in ref_grads.items():
        assert grads[name].dtype == torch.float32
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)


def test_drop_path_scales_the_residual_branches():
    """Scales 0 drop both residual branches (the output is the input plus
    its position encoding); scales 1 give the block without drop path."""
    block = make_block(drop_path_rate=0.3).train()
    x = block_input()
    shortcut = x + block.pos_embed(x)
    dropped = block(x, drop_path_scales=torch.zeros(2, 2, 1, 1, 1))
    torch.testing.assert_close(dropped, shortcut, rtol=1e-6, atol=1e-6)
    kept = block(x, drop_path_scales=torch.ones(2, 2, 1, 1, 1))
    plain = copy.deepcopy(block)
    plain.drop_path = nn.Identity()
    torch.testing.assert_close(kept, plain(x), rtol=1e-6, atol=1e-6)


def test_dsnet_draws_every_blocks_drop_path_at_the_blocks_rates():
    """One draw per forward: each block's scales are 0 or 1 / keep at its own
    rate (frequency over many images), blocks at rate 0 keep everything."""
    model = DSNet(
        dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
        drop_path_rate=0.6,
    ).train()
    torch.manual_seed(0)
    scales = model._drop_path_scales(torch.zeros(4000, 3, 32, 32))
    assert scales.shape == (4, 2, 4000, 1, 1, 1)
    keep = 1 - torch.tensor([0.0, 0.2, 0.4, 0.6])
    for i, k in enumerate(keep):
        values = scales[i].flatten()
        kept = values[values > 0]
        assert torch.equal(values[values <= 0], torch.zeros_like(values[values <= 0]))
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / k.item()))
        assert abs((values > 0).float().mean() - k) < 0.03
    assert model.eval()._drop_path_scales(torch.zeros(2, 3, 32, 32)) is None
