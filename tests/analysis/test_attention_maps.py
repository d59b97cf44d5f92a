"""Attention maps on request, recorded from outside the model:
mmdsnet.analysis.attention_maps and tools/analysis_tools/visualize_attention.py."""

import math
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO_ROOT, load_tool

from mmdsnet.analysis.attention_maps import (
    attention_targets,
    record_backbone_attention,
    record_block_attention,
)
from mmdsnet.models import DSNet
from mmdsnet.models.layers import DSBlock

TOOL = osp.join(REPO_ROOT, 'tools', 'analysis_tools', 'visualize_attention.py')
# Narrow DS-Net with two heads in stages 2-4: fast, and the head axis is exercised.
TINY_ARCH = dict(embed_dims=[16, 32, 40, 64], depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 2])


def random_dsnet(**kwargs):
    torch.manual_seed(0)
    model = DSNet(arch=kwargs.pop('arch', TINY_ARCH), drop_path_rate=0.0, **kwargs)
    model.init_weights()
    # Non-trivial BN statistics, so eval mode is not an identity.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def hooked_modules(model):
    return [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def assert_distribution(maps, keys):
    assert maps.shape[-1] == keys
    assert torch.all(maps >= 0)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5, rtol=0)


def test_block_maps_are_the_ones_the_fused_kernel_applies(monkeypatch):
    """Each map times its values gives the fused attention's output, and the block's
    output is that of the ordinary forward."""
    torch.manual_seed(0)
    block = DSBlock(32, num_heads=2, global_resize=4).eval()
    x = torch.randn(2, 32, 12, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x)
    calls = []
    fused = F.scaled_dot_product_attention

    def recording(query, key, value, **kwargs):
        out = fused(query, key, value, **kwargs)
        calls.append((value, out))
        return out

    monkeypatch.setattr(F, 'scaled_dot_product_attention', recording)
    with torch.no_grad():
        out, maps = record_block_attention(block, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert maps.map_size == (12, 20) and maps.grid_size == (3, 5)
    # Call order in the block: global self-attention, then local queries over
    # global keys, then global queries over local keys.
    assert len(calls) == 3
    for probs, (value, out) in zip(
        (maps.global_self, maps.local_to_global, maps.global_to_local), calls
    ):
        torch.testing.assert_close(probs @ value, out, atol=1e-5, rtol=1e-4)
    assert maps.global_self.shape == (2, 2, 15, 15)
    assert maps.local_to_global.shape == (2, 2, 240, 15)
    assert maps.global_to_local.shape == (2, 2, 15, 240)
    # Nothing stays hooked: the next forward is the plain fused one.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in block.modules())


def test_norm_ratios_match_the_alignment():
    """Ratios equal ||align(local) - local|| / ||local|| computed with DSBlock._align."""
    torch.manual_seed(1)
    block = DSBlock(16, num_heads=1, global_resize=2).eval()
    x = torch.randn(1, 16, 9, 7)
    seen = {}
    block.norm_conv2.register_forward_pre_hook(lambda m, a: seen.setdefault('local', a[0]))
    block.norm_sa2.register_forward_pre_hook(lambda m, a: seen.setdefault('tokens', a[0]))
    with torch.no_grad():
        _, maps = record_block_attention(block, x, with_maps=False)
        local, tokens = block._align(seen['local'], seen['tokens'])
    local_ref = (local - seen['local']).norm(dim=1) / seen['local'].norm(dim=1)
    global_ref = (tokens - seen['tokens']).norm(dim=-1) / seen['tokens'].norm(dim=-1)
    torch.testing.assert_close(maps.local_ratio, local_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps.global_ratio, global_ref.reshape(1, 4, 3), atol=1e-5, rtol=1e-4)
    assert maps.global_self is None and maps.local_to_global is None


@pytest.mark.parametrize('height,width', [(97, 130), (64, 64), (33, 200)])
def test_backbone_maps_follow_the_input_size(height, width):
    model = random_dsnet()
    x = torch.randn(1, 3, height, width)
    pad_h, pad_w = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    with torch.no_grad():
        expected = model(x)
        for stage in range(4):
            result = record_backbone_attention(model, x, stage, block=-1, ratio_blocks='last')
            stride = model.strides[stage]
            map_h, map_w = pad_h // stride, pad_w // stride
            grid = (
                max(1, map_h // model.global_resize[stage]),
                max(1, map_w // model.global_resize[stage]),
            )
            maps = result.maps
            assert result.input_size == (height, width)
            assert result.padded_size == (pad_h, pad_w)
            assert (result.block, maps.map_size, maps.grid_size) == (
                model.depths[stage] - 1,
                (map_h, map_w),
                grid,
            )
            pixels, tokens, heads = map_h * map_w, grid[0] * grid[1], model.num_heads[stage]
            assert maps.local_to_global.shape == (1, heads, pixels, tokens)
            assert maps.global_to_local.shape == (1, heads, tokens, pixels)
            assert maps.global_self.shape == (1, heads, tokens, tokens)
            assert_distribution(maps.local_to_global, tokens)
            assert_distribution(maps.global_to_local, pixels)
            assert_distribution(maps.global_self, tokens)
            assert sorted(result.stage_ratios) == [0, 1, 2, 3]
            for i, (block, ratios) in result.stage_ratios.items():
                assert block == model.depths[i] - 1
                assert ratios.local_ratio.shape == (
                    1,
                    pad_h // model.strides[i],
                    pad_w // model.strides[i],
                )
                assert torch.all(ratios.local_ratio > 0)
    # Nothing stays hooked, and the ordinary forward is unchanged after recording.
    assert not hooked_modules(model)
    with torch.no_grad():
        again = model(x)
    for a, b in zip(expected, again):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_backbone_maps_equal_the_block_run_alone():
    """The chosen block's maps are those of that block fed the backbone's activations."""
    model = random_dsnet()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        result = record_backbone_attention(model, x, stage=1, block=1)
        feat = F.pad(x, (0, 6, 0, 26))
        feat = model.stages[0](model.patch_embeds[0](feat))
        feat = model.stages[1][0](model.patch_embeds[1](feat))
        _, alone = record_block_attention(model.stages[1][1], feat)
    torch.testing.assert_close(result.maps.local_to_global, alone.local_to_global)
    assert result.stage_ratios == {}
    # 'last' ratio of the chosen stage is the chosen block itself: recorded once.
    with torch.no_grad():
        result = record_backbone_attention(model, x, stage=1, block=-1, ratio_blocks=0)
    assert [b for b, _ in result.stage_ratios.values()] == [0, 0, 0, 0]


def test_point_geometry_on_odd_input():
    model = random_dsnet()
    with torch.no_grad():
        result = record_backbone_attention(model, torch.randn(1, 3, 97, 130), stage=0)
    # Stage 1: stride 4 over the 128 x 160 padded input, global grid 4 x 5.
    assert result.maps.map_size == (32, 40) and result.maps.grid_size == (4, 5)
    assert result.pixel_index(129, 96) == 24 * 40 + 32
    assert result.token_index(129, 96) == 3 * 5 + 4
    assert result.token_cell(19) == (128.0, 96.0, 32.0, 32.0)
    with pytest.raises(ValueError, match='outside the 130x97'):
        result.pixel_index(130, 10)


@pytest.mark.parametrize(
    'kwargs,message',
    [
        (dict(stage=4), r'stage must be an int in 0\.\.3'),
        (dict(stage=1, block=2), r'stage 1 has 2 blocks'),
        (dict(stage=1, block=-3), r'stage 1 has 2 blocks'),
        (dict(stage=0, ratio_blocks=1), r"ratio_blocks must be None, 'last'"),
        (dict(stage=0, ratio_blocks='first'), r"ratio_blocks must be None, 'last'"),
    ],
)
def test_backbone_recording_rejects_bad_choices(kwargs, message):
    model = random_dsnet()
    with pytest.raises(ValueError, match=message):
        record_backbone_attention(model, torch.randn(1, 3, 64, 64), **kwargs)


def test_backbone_recording_respects_built_stages():
    model = random_dsnet(out_indices=(0, 1))
    with pytest.raises(ValueError, match=r'0\.\.1 .*out_indices=\(0, 1\)'):
        record_backbone_attention(model, torch.randn(1, 3, 64, 64), stage=2)
    with torch.no_grad():
        result = record_backbone_attention(
            model, torch.randn(1, 3, 64, 64), stage=1, ratio_blocks='last'
        )
    assert sorted(result.stage_ratios) == [0, 1]


def test_backbone_recording_checks_the_input_and_leaves_no_hook():
    """The input goes through DSNet's own checks; hooks go even when the forward raises."""
    model = random_dsnet()
    with pytest.raises(ValueError, match=r'DSNet needs H and W >= 32'):
        record_backbone_attention(model, torch.randn(1, 3, 16, 64), stage=0, ratio_blocks='last')
    with pytest.raises(ValueError, match='built for 3 input channels'):
        record_backbone_attention(model, torch.randn(1, 4, 64, 64), stage=0)
    assert not hooked_modules(model)


def test_backbone_recording_stops_after_the_last_block_needed():
    """Blocks after the last one recorded do not run."""
    model = random_dsnet()
    ran = []
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            block.register_forward_pre_hook(lambda m, a, where=(i, j): ran.append(where))
    with torch.no_grad():
        record_backbone_attention(model, torch.randn(1, 3, 64, 64), stage=1, block=0)
    assert ran == [(0, 0), (1, 0)]


@pytest.mark.parametrize(
    'choice,targets',
    [
        ((0, -1, None), (0, 0, {})),
        ((1, 0, 'last'), (1, 0, {0: 0, 1: 1, 2: 0, 3: 0})),
        ((1, -2, -1), (1, 0, {0: 0, 1: 1, 2: 0, 3: 0})),
        ((3, 0, 0), (3, 0, {0: 0, 1: 0, 2: 0, 3: 0})),
    ],
)
def test_attention_targets_are_indices_from_zero(choice, targets):
    assert tuple(attention_targets(random_dsnet(), *choice)) == targets


def test_attention_targets_in_the_command_line_spelling():
    """Numbers from 1, the options' names in the messages, no None."""
    from mmdsnet.analysis.attention_maps import TargetNames

    model = random_dsnet()
    names = TargetNames('--stage', '--block', '--ratio-block', first=1, takes_none=False)
    assert tuple(attention_targets(model, 2, 1, 1, names=names)) == (1, 0, {0: 0, 1: 0, 2: 0, 3: 0})
    assert attention_targets(model, 2, -1, 'last', names=names).block == 1
    with pytest.raises(ValueError, match=r'--stage must be an int in 1\.\.4 .*got 0'):
        attention_targets(model, 0, 1, 'last', names=names)
    with pytest.raises(ValueError, match=r'stage 2 has 2 blocks: --block must be an int in 1\.\.2'):
        attention_targets(model, 2, 0, 'last', names=names)
    with pytest.raises(ValueError, match=r"--ratio-block must be 'last' or a block number"):
        attention_targets(model, 2, 1, None, names=names)
    with pytest.raises(ValueError, match=r'stage must be an int in 0\.\.3 .*got True'):
        attention_targets(model, True)


def write_image(path, height, width):
    import mmcv

    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 230, np.uint8)
    image[height // 4 : height // 2, width // 3 : 2 * width // 3] = (30, 30, 200)
    image += rng.integers(0, 20, image.shape, dtype=np.uint8)
    mmcv.imwrite(image, str(path))
    return str(path)


def tiny_backbone_config(tmp_path, **extra):
    config = tmp_path / 'dsnet_tiny.py'
    lines = [f"model = dict(type='DSNet', arch={TINY_ARCH!r}, drop_path_rate=0.)"]
    lines += [f'{key} = {value!r}' for key, value in extra.items()]
    config.write_text('\n'.join(lines) + '\n')
    return str(config)


@pytest.mark.integration
def test_tool_writes_pngs_in_a_fresh_process(tmp_path):
    image = write_image(tmp_path / 'image.png', 97, 130)
    out_dir = tmp_path / 'maps'
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get('PYTHONPATH', '')])
    )
    proc = subprocess.run(
        [
            sys.executable,
            TOOL,
            osp.join(REPO_ROOT, 'configs', 'mask_rcnn_dsnet_t_fpn_1x_coco.py'),
            'none',
            image,
            '--out-dir',
            str(out_dir),
            '--stage',
            '2',
            '--block',
            '1',
            '--points',
            '10,90',
            '129,0',
            '--size',
            '130',
            '--device',
            'cpu',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'stage 2 block 1: local map 20x16, global grid 5x4' in proc.stdout
    for name in ('local_to_global.png', 'global_tokens.png', 'alignment_ratio.png'):
        with open(out_dir / name, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_tool_loads_a_runner_checkpoint(tmp_path):
    tool = load_tool('tools/analysis_tools/visualize_attention.py')
    config = tiny_backbone_config(tmp_path)
    trained = random_dsnet()
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(0.5)
    checkpoint = tmp_path / 'epoch_1.pth'
    torch.save(
        {'meta': {}, 'state_dict': {f'backbone.{k}': v for k, v in trained.state_dict().items()}},
        checkpoint,
    )
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    model = tool.build_backbone(cfg, config, str(checkpoint))
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert not model.training


def test_tool_refuses_a_checkpoint_of_another_model(tmp_path):
    tool = load_tool('tools/analysis_tools/visualize_attention.py')
    config = tiny_backbone_config(tmp_path)
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    with pytest.raises(SystemExit, match='checkpoint not found: .*missing.pth'):
        tool.build_backbone(cfg, config, str(tmp_path / 'missing.pth'))
    with pytest.raises(SystemExit, match='/dev/zero is not a regular file'):
        tool.build_backbone(cfg, config, '/dev/zero')
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}}, other)
    with pytest.raises(SystemExit, match='other.pth does not load into the DSNet'):
        tool.build_backbone(cfg, config, str(other))


def test_tool_resizes_and_normalises_like_the_config(tmp_path):
    tool = load_tool('tools/analysis_tools/visualize_attention.py')
    image = write_image(tmp_path / 'image.png', 60, 200)
    config = tiny_backbone_config(
        tmp_path, test_pipeline=[dict(type='Resize', scale=(100, 100), keep_ratio=True)]
    )
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    original, inputs = tool.prepare_image(cfg, image, size=None)
    assert original.shape == (60, 200, 3)
    assert inputs.shape == (1, 3, 30, 100)  # fits in 100 x 100, aspect kept
    _, inputs = tool.prepare_image(cfg, image, size=400)
    assert inputs.shape == (1, 3, 120, 400)
    # ImageNet mean/std on RGB: a pure-mean pixel maps to 0.
    assert abs(float(inputs.mean())) < 2


@pytest.mark.parametrize(
    'argv,message',
    [
        (['--stage', '5'], r'--stage must be an int in 1\.\.4'),
        (['--stage', '2', '--block', '3'], r'stage 2 has 2 blocks'),
        (['--points', '130,5'], r'point 130,5 lies outside the 130x97'),
        (['--points', '3'], r'--points takes x,y pairs'),
        (['--head', '2'], r'stage 1 has 1 heads'),
        (['--stage', '2', '--block', '0'], r'--block must be an int in 1\.\.2'),
        (['--ratio-block', '2'], r"--ratio-block must be 'last' or a block number .*1\.\.1"),
        (['--ratio-block', 'first'], r"--ratio-block must be 'last' .*got 'first'"),
    ],
)
def test_tool_bad_choices_exit_with_a_message(tmp_path, argv, message):
    tool = load_tool('tools/analysis_tools/visualize_attention.py')
    image = write_image(tmp_path / 'image.png', 97, 130)
    config = tiny_backbone_config(tmp_path)
    if '--stage' not in argv:
        argv = argv + ['--stage', '1']
    with pytest.raises(SystemExit, match=message):
        tool.main([config, 'none', image, '--out-dir', str(tmp_path / 'out'), *argv])


def test_tool_refuses_a_backbone_that_is_not_dsnet(tmp_path):
    tool = load_tool('tools/analysis_tools/visualize_attention.py')
    image = write_image(tmp_path / 'image.png', 64, 64)
    with pytest.raises(SystemExit, match='its backbone is ResNet, not DSNet'):
        tool.main(
            [
                'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
                'none',
                image,
                '--out-dir',
                str(tmp_path / 'out'),
            ]
        )
