"""DSNet(final_norm=True): the public classifiers' BatchNorm over stage 4, and its
weights. Needs no mmpretrain (the ImageClassifier around it: tests/models/test_classifier.py)."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmdsnet.checkpoint import dsnet_classifier_convert, dsnet_convert
from mmdsnet.models import DSNet
from mmdsnet.models.backbones.pretrained import load_pretrained_dsnet
from mmdsnet.testing import randomize_norm_stats, reference_for

SMALL = dict(embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2))
NORM_KEYS = {'norm.weight', 'norm.bias', 'norm.running_mean', 'norm.running_var'}


@pytest.fixture(scope='module')
def reference():
    torch.manual_seed(0)
    model = reference_for('tiny').eval()
    randomize_norm_stats(model, seed=3)
    return model


def load(path, **kwargs):
    model = DSNet('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kwargs)
    model.init_weights()
    return model.eval()


def test_default_has_no_final_norm():
    """Detection and segmentation models (and their checkpoints) are unchanged."""
    model = DSNet(SMALL)
    assert not model.final_norm and not hasattr(model, 'norm')
    assert not any(key.startswith('norm.') for key in model.state_dict())
    with_norm = DSNet(SMALL, final_norm=True)
    added = set(with_norm.state_dict()) - set(model.state_dict())
    assert added == NORM_KEYS | {'norm.num_batches_tracked'}


@pytest.mark.parametrize('out_indices', [(0, 1, 2), (2,)])
def test_final_norm_needs_the_last_stage(out_indices):
    with pytest.raises(ValueError, match=r'final_norm=True .* out_indices must include it'):
        DSNet(SMALL, out_indices=out_indices, final_norm=True)
    with pytest.raises(TypeError, match='final_norm'):
        DSNet(SMALL, final_norm='yes')


def test_final_norm_follows_norm_cfg():
    model = DSNet(SMALL, final_norm=True, norm_cfg=dict(type='GN', num_groups=4))
    assert isinstance(model.norm, torch.nn.GroupNorm) and model.norm.num_channels == 64


def test_public_weights_give_the_public_normalised_features(tmp_path, reference):
    """The public `norm.*` loads into `norm` (nothing missing); the last output is
    the public model's normalised stage-4 map, the earlier ones stay raw."""
    path = tmp_path / 'public.pth'
    torch.save({'model': reference.state_dict()}, path)
    model = load(path, out_indices=(2, 3), final_norm=True)
    for key in NORM_KEYS:
        assert torch.equal(model.state_dict()[key], reference.state_dict()[key]), key
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = reference.features(x)
        stage3, stage4 = model(x)
        torch.testing.assert_close(stage3, features[2], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stage4, reference.norm(features[3]), rtol=1e-4, atol=1e-4)
    # Without final_norm the same file loads as a backbone, its norm dropped.
    plain = load(path)
    assert not any(key.startswith('norm.') for key in plain.state_dict())


class RecordingLogger:
    """What the loader logs, one line per call."""

    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    warning = info


def test_a_missing_final_norm_is_reported(tmp_path, reference):
    """A backbone-only checkpoint leaves `norm` at its initial values: the loader
    says so, as for any other missing tensor."""
    path = tmp_path / 'backbone_only.pth'
    torch.save(dsnet_convert(reference.state_dict()), path)
    model = DSNet('tiny', out_indices=(3,), final_norm=True)
    logger = RecordingLogger()
    load_pretrained_dsnet(model, str(path), logger)
    log = '\n'.join(logger.lines)
    assert 'loaded 422/427' in log
    assert '5 tensors kept their initial values' in log and 'norm.running_var' in log


@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_a_classifier_checkpoint_seeds_a_detection_backbone(tmp_path, reference, prefix):
    """mmpretrain's layout (backbone.*, head.fc.*): the backbone loads, the final
    norm and the head are dropped."""
    path = tmp_path / 'classifier.pth'
    torch.save({'state_dict': dsnet_classifier_convert(reference.state_dict())}, path)
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    if prefix:
        init_cfg['prefix'] = prefix
    model = DSNet('tiny', out_indices=(1, 2, 3), init_cfg=init_cfg)
    model.init_weights()
    torch.testing.assert_close(
        model.stages[3][0].mlp.fc2.weight, reference.blocks4[0].mlp.fc2.weight, rtol=0, atol=0
    )
    with_norm = load(path, final_norm=True)
    torch.testing.assert_close(with_norm.norm.running_var, reference.norm.running_var)


def test_frozen_stages_4_freezes_the_final_norm():
    model = DSNet(SMALL, final_norm=True, frozen_stages=4).train()
    assert not model.norm.training
    assert not any(p.requires_grad for p in model.norm.parameters())
    model = DSNet(SMALL, final_norm=True, frozen_stages=3).train()
    assert model.norm.training and all(p.requires_grad for p in model.norm.parameters())


def test_norm_eval_keeps_the_final_norm_statistics():
    model = DSNet(SMALL, final_norm=True, norm_eval=True).train()
    assert not any(m.training for m in model.modules() if isinstance(m, _BatchNorm))
    before = model.norm.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.norm.running_mean, before)
    trained = DSNet(SMALL, final_norm=True).train()
    trained(torch.randn(2, 3, 64, 64))
    assert not torch.equal(trained.norm.running_mean, torch.zeros(64))


@pytest.mark.integration
def test_without_mmpretrain_the_backbone_and_conversion_work(tmp_path):
    """mmpretrain is optional: without it `import mmdsnet`, DSNet(final_norm=True)
    and the classifier conversion all work."""
    code = textwrap.dedent("""
        import sys
        sys.modules['mmpretrain'] = None  # `import mmpretrain` raises ImportError
        import torch
        import mmdsnet
        from mmdsnet.checkpoint import dsnet_classifier_convert
        from mmdsnet.models import DSNet
        from mmdsnet.testing import reference_for
        arch = dict(embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2))
        model = DSNet(arch, out_indices=(3,), final_norm=True).eval()
        print('out', tuple(model(torch.zeros(1, 3, 64, 64))[0].shape))
        weights = dsnet_classifier_convert(reference_for(arch, num_classes=7).state_dict())
        print('head', tuple(weights['head.fc.weight'].shape))
    """)
    result = subprocess.run(
        [sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert 'out (1, 64, 2, 2)' in result.stdout and 'head (7, 64)' in result.stdout
