"""Public DS-Net classifiers -> mmpretrain ImageClassifier checkpoints
(``dsnet2mmdet.py --classifier``): the public model's logits, from both public layouts."""

import os.path as osp
import pickle

import pytest
import torch
from helpers import REPO_ROOT, converter_command, run_at_once, to_paddle

from mmdsnet.checkpoint import convert_file, dsnet_classifier_convert, dsnet_convert
from mmdsnet.testing import randomize_norm_stats, reference_for

pytest.importorskip(
    'mmpretrain', reason='mmpretrain (optional) builds the ImageClassifier the weights load into'
)
from mmengine.config import Config  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

# A scope an earlier test left current (e.g. 'mmseg') would send builds to its registries.
pytestmark = pytest.mark.usefixtures('mmpretrain_scope')

ARCHS = {'t': 'tiny', 's': 'small', 'b': 'base'}


def public_model(letter):
    """A public-layout classifier with random weights and BN statistics."""
    torch.manual_seed(len(letter) + ord(letter))
    model = reference_for(ARCHS[letter]).eval()
    randomize_norm_stats(model, seed=ord(letter))
    return model


def classifier(letter):
    """The ImageClassifier of configs/dsnet-<letter>_8xb128_in1k.py, in eval mode."""
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', f'dsnet-{letter}_8xb128_in1k.py'))
    return MODELS.build(cfg.model).eval()


def save_public(model, path, layout):
    if layout == 'timm':
        torch.save({'model': model.state_dict(), 'epoch': 299}, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(to_paddle(model.state_dict()), f, protocol=2)


def relative_error(actual, expected):
    """Largest logit difference relative to the largest public logit."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize('layout', ['timm', 'paddle'])
@pytest.mark.parametrize('letter', ['t', 's'])
def test_converted_classifier_gives_the_public_logits(tmp_path, letter, layout):
    public = public_model(letter)
    src = tmp_path / ('public.pth' if layout == 'timm' else 'public.pdparams')
    save_public(public, src, layout)
    dst = tmp_path / 'classifier.pth'
    convert_file(str(src), str(dst), classifier=True)
    model = classifier(letter)
    # strict: every tensor of the model is in the file, and nothing else.
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = public(x), model(x, mode='tensor')
    error = relative_error(actual, expected)
    print(f'DS-Net-{letter.upper()} {layout}: max relative logit error {error:.2e}')
    assert error < 1e-4
    assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_paddle_layout_of_every_arch_converts_to_its_torch_weights():
    """B (and T, S): the .pdparams layout converts tensor by tensor to what the
    timm layout converts to (BN counters aside: Paddle keeps none)."""
    for letter in ('t', 's', 'b'):
        public = public_model(letter).state_dict()
        from_timm = dsnet_classifier_convert(public)
        from_paddle = dsnet_classifier_convert(to_paddle(public))
        counters = {k for k in from_timm if k.endswith('num_batches_tracked')}
        assert set(from_paddle) == set(from_timm)
        for key in set(from_timm) - counters:
            assert torch.equal(from_paddle[key], from_timm[key]), (letter, key)
        assert from_paddle['head.fc.weight'].shape == (1000, 512)


def test_classifier_route_refuses_what_has_no_classifier():
    public = public_model('t').state_dict()
    backbone_only = dsnet_convert(public)
    with pytest.raises(ValueError, match=r'has no complete classifier .* found head keys none'):
        dsnet_classifier_convert(backbone_only, source='dsnet_t_mm.pth')
    no_norm = {k: v for k, v in public.items() if not k.startswith('norm.')}
    with pytest.raises(ValueError, match='and no final norm'):
        dsnet_classifier_convert(no_norm)
    transposed = dict(public, **{'head.weight': public['head.weight'].t()})
    with pytest.raises(ValueError, match=r'head weight \(512, 1000\) does not take the 512'):
        dsnet_classifier_convert(transposed)


def test_an_image_classifier_checkpoint_converts_to_itself():
    """Already mmpretrain's layout (a trained or converted classifier): the same weights."""
    converted = dsnet_classifier_convert(public_model('t').state_dict())
    again = dsnet_classifier_convert({'module.' + k: v for k, v in converted.items()})
    assert list(again) == list(converted)
    assert all(torch.equal(again[k], converted[k]) for k in converted)


@pytest.mark.integration
def test_cli_classifier_route(tmp_path):
    src, dst = tmp_path / 'DSNet_tiny_pretrained.pdparams', tmp_path / 'out' / 'cls.pth'
    save_public(public_model('t'), src, 'paddle')
    backbone = tmp_path / 'backbone.pth'
    torch.save(dsnet_convert(public_model('t').state_dict()), backbone)
    result, refused = run_at_once([
        converter_command(src, dst, '--classifier'),
        converter_command(backbone, tmp_path / 'no.pth', '--classifier'),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '10,534,312 parameters, mmpretrain ImageClassifier' in result.stdout + result.stderr
    saved = torch.load(dst, weights_only=True)
    assert set(saved['state_dict']) == set(classifier('t').state_dict())
    assert refused.returncode != 0
    assert 'nothing written: ValueError' in refused.stderr and 'no complete classifier' in (
        refused.stderr
    )
    assert 'Traceback' not in refused.stderr and not (tmp_path / 'no.pth').exists()
