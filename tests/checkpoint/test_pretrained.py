"""Public DS-Net checkpoints -> DSNet: conversion, loading, and loud failures."""

import os
import pickle
import sys

import numpy as np
import pytest
import torch
from helpers import converter_command, run_at_once, run_converter, to_paddle
from mmengine.logging import MMLogger

from mmdsnet.checkpoint import detect_layout, dsnet_convert, read_checkpoint
from mmdsnet.models import DSNet
from mmdsnet.testing import randomize_norm_stats, reference_for


@pytest.fixture(scope='module')
def reference():
    torch.manual_seed(0)
    model = reference_for('tiny').eval()
    randomize_norm_stats(model)
    return model


def public_to_ours(key):
    """The mapping the converter must apply, spelled out independently."""
    if key.startswith('patch_embed'):
        return f'patch_embeds.{int(key[11]) - 1}.{key.split(".proj.")[1]}'
    stage, rest = key[len('blocks') :].split('.', 1)
    return f'stages.{int(stage) - 1}.{rest}'


def assert_loaded_from(model, public_sd):
    ours = model.state_dict()
    mapped = 0
    for key, value in public_sd.items():
        if key.startswith(('head.', 'norm.')):
            continue
        torch.testing.assert_close(ours[public_to_ours(key)], value, rtol=0, atol=0, msg=key)
        mapped += 1
    assert mapped == len(ours) == 422


def build_and_load(path, arch='tiny', prefix=None, **kwargs):
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    if prefix is not None:
        init_cfg['prefix'] = prefix
    model = DSNet(arch, init_cfg=init_cfg, **kwargs)
    model.init_weights()
    return model.eval()


def save_under_prefix(path, reference, prefix):
    """The reference's weights in our layout under ``prefix``, as a Runner saves a model."""
    ours = dsnet_convert(reference.state_dict())
    torch.save({'state_dict': {f'{prefix}{k}': v for k, v in ours.items()}}, path)


@pytest.mark.parametrize('wrapper', [None, 'model', 'model_ema', 'state_dict'])
@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_timm_layout_round_trip(tmp_path, reference, wrapper, prefix):
    public = reference.state_dict()
    sd = {prefix + k: v for k, v in public.items()}
    path = tmp_path / 'dsnet_t.pth'
    torch.save({wrapper: sd, 'epoch': 299} if wrapper else sd, path)
    model = build_and_load(path)
    assert_loaded_from(model, public)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for expected, actual in zip(reference.features(x), model(x)):
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('protocol', [2, 3, 4])
def test_paddle_layout_round_trip(tmp_path, reference, protocol):
    """Protocol 2 is what Paddle 2.0's save_dygraph and paddle.save(protocol=2)
    write: bytes as _codecs.encode(str, 'latin1')."""
    path = tmp_path / 'DSNet_tiny_pretrained.pdparams'
    with open(path, 'wb') as f:
        pickle.dump(to_paddle(reference.state_dict()), f, protocol=protocol)
    assert detect_layout(read_checkpoint(str(path))) == 'paddle'
    model = build_and_load(path)
    public = {
        k: v for k, v in reference.state_dict().items() if not k.endswith('num_batches_tracked')
    }
    ours = model.state_dict()
    for key, value in public.items():
        if not key.startswith(('head.', 'norm.')):
            torch.testing.assert_close(ours[public_to_ours(key)], value, rtol=0, atol=0)
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        for expected, actual in zip(reference.features(x), model(x)):
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


class Payload:
    def __reduce__(self):
        return (print, ('arbitrary code ran',))


class CodecsPayload:
    """_codecs.encode is allowed for protocol 2, but only as str -> latin-1 bytes."""

    def __reduce__(self):
        import _codecs

        return (_codecs.encode, (b'x', 'rot13'))


@pytest.mark.parametrize('protocol', [2, 4])
def test_pdparams_refuses_arbitrary_objects(tmp_path, protocol):
    path = tmp_path / 'evil.pdparams'
    with open(path, 'wb') as f:
        pickle.dump({'x': Payload()}, f, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match='refusing to load'):
        read_checkpoint(str(path))
    with open(path, 'wb') as f:
        pickle.dump({'x': CodecsPayload()}, f, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match='refusing _codecs.encode'):
        read_checkpoint(str(path))
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match='Could not read'):
        model.init_weights()


def test_detector_checkpoint_of_ours_loads_backbone(tmp_path, reference):
    public = reference.state_dict()
    ours = dsnet_convert(public)
    detector = {f'backbone.{k}': v for k, v in ours.items()}
    detector['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    path = tmp_path / 'mask_rcnn.pth'
    torch.save({'state_dict': detector, 'meta': {'epoch': 12}}, path)
    assert_loaded_from(build_and_load(path), public)


def test_one_load_takes_the_weights_out_of_their_container_once(tmp_path, reference, monkeypatch):
    """The route runs one way: read_checkpoint unwraps, and the prefix, the layout
    checks, the key map and the fit work on the state dict it returns."""
    from mmdsnet.checkpoint import convert_file, reading

    calls = []
    unwrap = reading.unwrap_state_dict

    def counted(checkpoint):
        calls.append(sorted(checkpoint)[:2])
        return unwrap(checkpoint)

    for name, module in list(sys.modules.items()):
        if name.startswith('mmdsnet') and getattr(module, 'unwrap_state_dict', None) is unwrap:
            monkeypatch.setattr(module, 'unwrap_state_dict', counted)
    detector = tmp_path / 'detector.pth'
    save_under_prefix(detector, reference, 'backbone.')
    assert_loaded_from(build_and_load(detector, prefix='backbone.'), reference.state_dict())
    assert calls == [['state_dict']]
    public = tmp_path / 'timm.pth'
    torch.save({'model': reference.state_dict(), 'model_ema': {}}, public)
    convert_file(str(public), str(tmp_path / 'ours.pth'))
    assert calls == [['state_dict'], ['model', 'model_ema']]


@pytest.mark.integration
def test_cli_converter(tmp_path, reference):
    src, dst = tmp_path / 'src.pth', tmp_path / 'out' / 'dsnet_t_mm.pth'
    torch.save({'model': reference.state_dict()}, src)
    result = run_converter(src, dst)
    assert result.returncode == 0, result.stderr
    assert '422 tensors' in result.stdout + result.stderr
    converted = torch.load(dst, weights_only=True)
    assert set(converted) == set(DSNet('tiny').state_dict())
    assert_loaded_from(build_and_load(dst), reference.state_dict())


def test_subset_out_indices_skips_unbuilt_stages(tmp_path, reference):
    path = tmp_path / 'ckpt.pth'
    torch.save(reference.state_dict(), path)
    model = build_and_load(path, out_indices=(0, 1))
    assert len(model.stages) == 2
    torch.testing.assert_close(model.stages[1][0].conv1.weight, reference.blocks2[0].conv1.weight)


def test_missing_file_fails_loudly(tmp_path):
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'no.pth')))
    with pytest.raises(FileNotFoundError, match='dsnet2mmdet.py'):
        model.init_weights()


def test_corrupt_file_fails_loudly(tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(b'not a checkpoint')
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match='Could not read'):
        model.init_weights()


def test_other_backbone_checkpoint_fails_loudly(tmp_path):
    path = tmp_path / 'r50_retinanet.pth'
    torch.save(
        {
            'state_dict': {
                'backbone.conv1.weight': torch.zeros(64, 3, 7, 7),
                'backbone.layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1),
                'neck.fpn_convs.0.conv.weight': torch.zeros(1),
            }
        },
        path,
    )
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match=r'Only 0/422 DSNet tensors'):
        model.init_weights()


def test_wrong_arch_fails_loudly(tmp_path, reference):
    path = tmp_path / 'tiny.pth'
    torch.save(reference.state_dict(), path)
    # tiny weights into small: most of the deeper model would stay random.
    with pytest.raises(RuntimeError, match='Only 422/836'):
        build_and_load(path, arch='small')
    # tiny weights into a model without alignment: surplus co-attention layers.
    with pytest.raises(RuntimeError, match='no place in this DSNet'):
        build_and_load(path, with_alignment=False)
    # Different widths: shape mismatch.
    narrow = dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 4, 1), num_heads=(1, 2, 5, 8))
    with pytest.raises(RuntimeError, match='do not fit this DSNet'):
        build_and_load(path, arch=narrow)


def test_partial_load_is_reported(tmp_path, reference, capsys):
    sd = dict(reference.state_dict())
    del sd['blocks4.0.mlp.fc2.bias']
    path = tmp_path / 'partial.pth'
    torch.save(sd, path)
    logger = MMLogger.get_instance('test_partial', log_level='INFO')
    from mmdsnet.models.backbones.pretrained import load_pretrained_dsnet

    model = DSNet('tiny')
    load_pretrained_dsnet(model, str(path), logger)
    out = capsys.readouterr()
    assert 'stages.3.0.mlp.fc2.bias' in out.out + out.err
    assert 'loaded 421/422' in out.out + out.err


def test_init_cfg_list_goes_through_the_converter(tmp_path, reference):
    """mmengine accepts init_cfg as a list; the Pretrained entry must still be
    converted and checked, and the other entries applied."""
    path = tmp_path / 'timm.pth'
    torch.save({'model': reference.state_dict()}, path)
    model = DSNet(
        'tiny',
        init_cfg=[
            dict(type='Constant', layer='LayerNorm', val=0.5, bias=0.0),
            dict(type='Pretrained', checkpoint=str(path)),
        ],
    )
    model.init_weights()
    assert_loaded_from(model, reference.state_dict())
    resnet = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7)}, resnet)
    model = DSNet('tiny', init_cfg=[dict(type='Pretrained', checkpoint=str(resnet))])
    with pytest.raises(RuntimeError, match='Only 0/422 DSNet tensors'):
        model.init_weights()


def test_init_weights_reads_init_cfg_when_it_runs(tmp_path, reference):
    """DSNet keeps no copy of its Pretrained entry: init_cfg set after the build is
    what init_weights loads; a second call warns and changes nothing, as in mmengine."""
    path = tmp_path / 'timm.pth'
    torch.save(reference.state_dict(), path)
    model = DSNet('tiny')
    model.init_cfg = [
        dict(type='Constant', layer='Linear', val=0.25, bias=0.0),
        dict(type='Pretrained', checkpoint=str(path)),
    ]
    given = [dict(entry) for entry in model.init_cfg]
    model.init_weights()
    assert_loaded_from(model, reference.state_dict())
    assert model.init_cfg == given and model.is_init
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_cfg = dict(type='Constant', layer='Conv2d', val=0.0)
    model.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize('others', [[], [dict(type='Constant', layer='Linear', val=0.25)]])
def test_a_failed_load_is_not_an_initialised_model(tmp_path, reference, others):
    """init_weights that raised loaded nothing: calling it again loads (no warning and
    random weights kept, as a second call after a success would)."""
    path = tmp_path / 'later.pth'
    model = DSNet('tiny', init_cfg=[*others, dict(type='Pretrained', checkpoint=str(path))])
    with pytest.raises(FileNotFoundError):
        model.init_weights()
    assert not model.is_init
    torch.save(reference.state_dict(), path)
    model.init_weights()
    assert_loaded_from(model, reference.state_dict())
    assert model.is_init


def test_init_cfg_list_without_pretrained_runs_through_mmengine():
    model = DSNet('tiny', init_cfg=[dict(type='Constant', layer='Linear', val=0.25, bias=0.0)])
    model.init_weights()
    assert torch.all(model.stages[0][0].channel_up.weight == 0.25)


@pytest.mark.parametrize(
    'init_cfg,match',
    [
        (dict(type='Pretrained'), r'needs checkpoint=PATH'),
        ([dict(type='Pretrained', checkpoint='')], r'needs checkpoint=PATH'),
        (
            [
                dict(type='Pretrained', checkpoint='a.pth'),
                dict(type='Pretrained', checkpoint='b.pth'),
            ],
            'has 2 Pretrained entries',
        ),
        (dict(type='Pretrained', checkpoint='a.pth', strict=True), r"unknown keys \['strict'\]"),
        (dict(type='Pretrained', checkpoint='a.pth', prefix=''), 'prefix must be a non-empty str'),
    ],
)
def test_bad_pretrained_init_cfg_is_refused_at_construction(init_cfg, match):
    with pytest.raises(ValueError, match=match):
        DSNet('tiny', init_cfg=init_cfg)


def test_prefix_selects_a_submodel(tmp_path, reference):
    path = tmp_path / 'teacher.pth'
    save_under_prefix(path, reference, 'student.backbone.')
    assert_loaded_from(build_and_load(path, prefix='student.backbone.'), reference.state_dict())
    with pytest.raises(RuntimeError, match="No key of .* starts with prefix 'x.'"):
        build_and_load(path, prefix='x.')


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, reference, bad):
    sd = dict(reference.state_dict())
    sd['blocks3.1.mlp.fc1.weight'] = sd['blocks3.1.mlp.fc1.weight'].clone()
    sd['blocks3.1.mlp.fc1.weight'][0, 0] = bad
    path = tmp_path / 'diverged.pth'
    torch.save(sd, path)
    kind = 'NaN' if bad != bad else 'Inf'
    with pytest.raises(ValueError, match=rf"'stages.2.1.mlp.fc1.weight' .* holds {kind}"):
        build_and_load(path)


def test_unreadable_inputs_say_what_is_wrong(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(RuntimeError, match=r'empty\.pth is empty \(0 bytes\)'):
        build_and_load(empty)
    odd = tmp_path / 'odd.pth'
    torch.save({'patch_embeds.0.weight': 0.5}, odd)
    with pytest.raises(ValueError, match=r"odd\.pth: value of 'patch_embeds.0.weight' is a float"):
        build_and_load(odd)
    truncated = tmp_path / 'truncated.pth'
    torch.save({'patch_embeds.0.weight': torch.zeros(64, 3, 4, 4)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=r'Could not read .*truncated\.pth: \w+Error'):
        build_and_load(truncated)


@pytest.mark.integration
def test_cli_converter_refuses_what_is_not_a_ds_net_checkpoint(tmp_path):
    resnet, dst = tmp_path / 'resnet50.pth', tmp_path / 'out.pth'
    torch.save(
        {
            'state_dict': {
                'conv1.weight': torch.zeros(64, 3, 7, 7),
                'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1),
            }
        },
        resnet,
    )
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    cases = [
        (resnet, 'is not a DS-Net checkpoint'),
        (empty, 'is empty (0 bytes)'),
        (tmp_path, 'is a directory'),
        (tmp_path / 'missing.pth', 'not found'),
    ]
    results = run_at_once([converter_command(src, dst) for src, _ in cases], timeout=120)
    for (src, message), result in zip(cases, results):
        assert result.returncode != 0, (src, result.stdout)
        assert message in result.stderr, result.stderr
        assert 'Traceback' not in result.stderr
    assert not dst.exists()


def test_converter_on_a_full_disk_leaves_nothing(tmp_path, reference, monkeypatch):
    """The converter writes atomically: a full disk raises CheckpointSaveError and
    leaves neither the destination nor a partial file."""
    import errno

    from mmdsnet.checkpoint import CheckpointSaveError, convert_file

    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(reference.state_dict(), src)

    def full_disk_save(obj, path):
        with open(path, 'wb') as f:
            f.write(b'PK\x03\x04 half a checkpoint')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(torch, 'save', full_disk_save)
    with pytest.raises(CheckpointSaveError, match=r'writing .*dst\.pth failed \(No space left'):
        convert_file(str(src), str(dst))
    assert os.listdir(tmp_path) == ['src.pth']


def test_runner_checkpoint_of_a_detector_seeds_the_backbone(tmp_path, reference):
    """A Runner checkpoint carries a pickled MessageHub (HistoryBuffer, numpy);
    the backbone loader allows those types for its own load."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance('seed_backbone')
    hub.update_scalar('train/loss', 1.5)
    hub.update_info('eta', np.float64(12.0))
    ours = dsnet_convert(reference.state_dict())
    path = tmp_path / 'epoch_12.pth'
    torch.save(
        {
            'meta': {'epoch': 12},
            'message_hub': hub.state_dict(),
            'state_dict': {f'backbone.{k}': v for k, v in ours.items()},
        },
        path,
    )
    assert_loaded_from(build_and_load(path), reference.state_dict())
