"""SyncBN conversion of DSNet and DSFPN (the configs train with SyncBN on GPUs).

mmengine's ``convert_sync_batchnorm`` / ``revert_sync_batchnorm`` and torch's
``nn.SyncBatchNorm.convert_sync_batchnorm`` walk the registered children, so
every BN of our modules must be a registered ``_BatchNorm`` child, and
``DSNet(norm_eval=True)`` must still freeze the converted layers. Conversion
keeps the weights and buffers (the same tensors), so outputs are unchanged.
"""

import contextlib

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from helpers import REPO_ROOT
from mmengine.config import Config
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.model.utils import _BatchNormXd
from torch.nn.modules.batchnorm import _BatchNorm

from mmdsnet.models.backbones.dsnet import DSNet
from mmdsnet.models.necks.ds_fpn import DSFPN

BN_CFG = dict(type='BN', requires_grad=True)


def build_bn_model() -> nn.Sequential:
    """DSNet-T + DSFPN with BN everywhere: DS-Blocks, laterals, FPN convs."""
    torch.manual_seed(0)
    backbone = DSNet('tiny', drop_path_rate=0.0)
    neck = DSFPN([64, 128, 320, 512], 64, 5, norm_cfg=BN_CFG, ds_norm_cfg=BN_CFG, ds_num_heads=1)
    model = nn.Sequential(backbone, neck)
    # Non-trivial statistics and affine parameters, so that "kept" means something.
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.num_batches_tracked.fill_(7)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model


def expected_counts(model: nn.Sequential):
    """(BN, LayerNorm) count: a DS-Block has 4 BN (norm1, norm_conv1,
    norm_conv2, norm2) and 2 LayerNorm (global tokens); the neck's laterals
    and FPN convs one BN each."""
    backbone, neck = model
    blocks = sum(backbone.depths) + sum(len(level) for level in neck.ds_blocks.values())
    return 4 * blocks + len(neck.lateral_convs) + len(neck.fpn_convs), 2 * blocks


def norms_by_type(model: nn.Module) -> dict:
    """Norm layers per type; mmcv's SyncBatchNorm is no ``_BatchNorm``."""
    from mmcv.ops import SyncBatchNorm as MMCVSyncBatchNorm

    counts = {}
    for module in model.modules():
        if isinstance(module, (_BatchNorm, MMCVSyncBatchNorm, nn.GroupNorm, nn.LayerNorm)):
            # the DS-Blocks' GroupNorm subclass (one value per group) counts as GroupNorm
            kind = nn.GroupNorm if isinstance(module, nn.GroupNorm) else type(module)
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, state: dict) -> None:
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert torch.equal(now[key], value), key


def eval_outputs(model: nn.Module, images: torch.Tensor):
    with torch.no_grad():
        return model.eval()(images)


@contextlib.contextmanager
def single_process_group(tmp_path):
    """A 1-process gloo group: mmcv's SyncBatchNorm needs one to be built."""
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


CONVERTERS = {
    'mmengine-torch': lambda m: convert_sync_batchnorm(m, implementation='torch'),
    'torch': nn.SyncBatchNorm.convert_sync_batchnorm,
    'mmengine-mmcv': lambda m: convert_sync_batchnorm(m, implementation='mmcv'),
}


@pytest.mark.parametrize('converter', list(CONVERTERS))
def test_convert_and_revert_replace_every_bn_and_keep_weights(converter, tmp_path):
    model = build_bn_model()
    images = torch.randn(1, 3, 64, 64)
    before_out = eval_outputs(model, images)
    state = snapshot(model.train())
    count, layer_norms = expected_counts(model)
    assert norms_by_type(model) == {nn.BatchNorm2d: count, nn.LayerNorm: layer_norms}

    group = single_process_group(tmp_path) if 'mmcv' in converter else contextlib.nullcontext()
    with group:
        synced = CONVERTERS[converter](model)
    from mmcv.ops import SyncBatchNorm as MMCVSyncBatchNorm

    sync_type = MMCVSyncBatchNorm if 'mmcv' in converter else nn.SyncBatchNorm
    assert norms_by_type(synced) == {sync_type: count, nn.LayerNorm: layer_norms}
    assert_same_state(synced, state)
    assert all(m.training for m in synced.modules())  # the training flag is kept

    reverted = revert_sync_batchnorm(synced)
    assert norms_by_type(reverted) == {_BatchNormXd: count, nn.LayerNorm: layer_norms}
    assert_same_state(reverted, state)
    for out, ref in zip(eval_outputs(reverted, images), before_out):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_default_dsfpn_keeps_group_norm():
    """DSFPN's default DS-Block norm is GroupNorm: nothing there to convert."""
    neck = DSFPN([64, 128, 320, 512], 64, 4, ds_num_heads=1)
    synced = convert_sync_batchnorm(neck)
    assert norms_by_type(synced) == {nn.GroupNorm: 4 * 4, nn.LayerNorm: 4 * 2}


def test_norm_eval_freezes_converted_sync_bn():
    """``DSNet.train()`` re-applies ``norm_eval`` to SyncBN layers as well."""
    backbone = convert_sync_batchnorm(DSNet('tiny', norm_eval=True))
    backbone.train()
    sync = [m for m in backbone.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(sync) == 4 * sum(backbone.depths)
    assert not any(m.training for m in sync)
    assert backbone.stages[0][0].conv.training  # the rest trains


@pytest.mark.usefixtures('mmseg_scope')
@pytest.mark.parametrize(
    'config,part',
    [
        ('fpn_dsnet-t_4xb8-40k_ade20k-512x512.py', 'backbone'),
        ('fpn_dsnet-s_dsfpn_4xb8-40k_ade20k-512x512.py', 'neck'),
    ],
)
def test_config_built_sync_bn_reverts_to_bn(config, part):
    """The SyncBN of a shipped config reverts to BN with the same state dict,
    which a BN-built twin loads strictly and runs to the same outputs."""
    from mmseg.registry import MODELS

    cfg = Config.fromfile(f'{REPO_ROOT}/configs/{config}')
    part_cfg = cfg.model[part]
    part_cfg.pop('init_cfg', None)
    norm_key = 'norm_cfg' if part == 'backbone' else 'ds_norm_cfg'
    assert part_cfg[norm_key]['type'] == 'SyncBN'
    torch.manual_seed(0)
    synced = MODELS.build(part_cfg)
    count = sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    blocks = sum(synced.depths) if part == 'backbone' else len(synced.ds_blocks) * 1
    assert count == 4 * blocks and count == sum(isinstance(m, _BatchNorm) for m in synced.modules())
    state = snapshot(synced)

    reverted = revert_sync_batchnorm(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
    assert sum(isinstance(m, _BatchNormXd) for m in reverted.modules()) == count
    assert_same_state(reverted, state)

    part_cfg[norm_key] = dict(part_cfg[norm_key], type='BN')
    twin = MODELS.build(part_cfg)
    twin.load_state_dict(reverted.state_dict(), strict=True)
    if part == 'backbone':
        inputs = torch.randn(1, 3, 64, 64)
    else:
        inputs = [
            torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(twin.in_channels, (4, 8, 16, 32))
        ]
    for out, ref in zip(eval_outputs(reverted, inputs), eval_outputs(twin, inputs)):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
