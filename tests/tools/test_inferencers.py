"""mmdet's DetInferencer and mmseg's MMSegInferencer with the project's configs and
checkpoints, the way mmdet and mmseg users run inference (docs/visualization.md)."""

import json
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
from helpers import REPO_ROOT
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmengine.registry import DefaultScope

import mmdsnet  # noqa: F401  (registers DSNet/DSFPN; allows Runner checkpoint types)

# An inferencer makes its framework's DefaultScope the current one (init_default_scope):
# later tests would build in mmdet's or mmseg's registry.
pytestmark = pytest.mark.usefixtures('drop_runner_globals')

DET_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'mask_rcnn_dsnet_t_dsfpn_demo.py')
SEG_CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'fpn_dsnet-t_demo-seg.py')


def random_checkpoint(config_path, path):
    """Save a random-weight model of ``config_path`` the way mmengine's Runner
    does: weights, the config text and the dataset's classes and palette in
    ``meta``, and a message hub holding HistoryBuffer objects (refused by torch.load's
    weights_only default unless mmdsnet allowed them)."""
    cfg = Config.fromfile(config_path)
    cfg.model.backbone.init_cfg = None
    scope = cfg.get('default_scope', 'mmdet')
    with DefaultScope.overwrite_default_scope(scope):
        if scope == 'mmdet':
            from mmdet.registry import MODELS
        else:
            from mmseg.registry import MODELS
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
    model.init_weights()
    hub = MessageHub.get_instance('test_inferencers')
    hub.update_scalar('train/loss', 1.5)
    metainfo = dict(cfg.train_dataloader.dataset.metainfo)  # classes and palette
    torch.save(
        dict(
            meta=dict(cfg=cfg.pretty_text, epoch=1, iter=2, dataset_meta=metainfo),
            state_dict=model.state_dict(),
            message_hub=hub.state_dict(),
        ),
        path,
    )
    return str(path), metainfo['classes']


@pytest.fixture(scope='module')
def image(tmp_path_factory):
    """A 96 x 128 image with two coloured shapes on a grey background."""
    img = np.full((96, 128, 3), 200, np.uint8)
    img[20:60, 16:56] = (40, 40, 220)
    img[50:90, 70:120] = (30, 160, 30)
    path = tmp_path_factory.mktemp('inferencers') / 'shapes.png'
    mmcv.imwrite(img, str(path))
    return str(path)


@pytest.fixture(scope='module')
def det_checkpoint(tmp_path_factory):
    return random_checkpoint(DET_CONFIG, tmp_path_factory.mktemp('det') / 'random.pth')


def run_det_inferencer(inferencer, image, out_dir):
    results = inferencer(image, out_dir=str(out_dir), pred_score_thr=0.0, no_save_pred=False)
    prediction = results['predictions'][0]
    drawn = mmcv.imread(osp.join(out_dir, 'vis', osp.basename(image)))
    assert drawn.shape == (96, 128, 3)
    with open(osp.join(out_dir, 'preds', 'shapes.json')) as f:
        assert json.load(f)['scores'] == pytest.approx(prediction['scores'])
    return prediction


def test_det_inferencer_with_config_and_checkpoint(image, det_checkpoint, tmp_path):
    from mmdet.apis import DetInferencer

    checkpoint, classes = det_checkpoint
    inferencer = DetInferencer(model=DET_CONFIG, weights=checkpoint, device='cpu')
    assert inferencer.model.backbone.__class__.__name__ == 'DSNet'
    assert tuple(inferencer.model.dataset_meta['classes']) == tuple(classes)
    prediction = run_det_inferencer(inferencer, image, tmp_path)
    # The demo config keeps at most 20 detections per image.
    assert 0 < len(prediction['scores']) <= 20
    assert len(prediction['bboxes']) == len(prediction['labels']) == len(prediction['masks'])


def test_det_inferencer_from_the_checkpoint_alone(image, det_checkpoint, tmp_path, monkeypatch):
    """weights= only: the config comes from the checkpoint's meta; needs mmdsnet imported
    (model registry, and the Runner's types allowed by torch.load on torch >= 2.6) and,
    as the stored config runs as Python, the file declared trusted."""
    from mmdet.apis import DetInferencer

    from mmdsnet.engine import TRUST_CONFIG_ENV

    checkpoint, _ = det_checkpoint
    monkeypatch.setenv(TRUST_CONFIG_ENV, '1')
    alone = run_det_inferencer(
        DetInferencer(weights=checkpoint, device='cpu'), image, tmp_path / 'alone'
    )
    with_config = run_det_inferencer(
        DetInferencer(model=DET_CONFIG, weights=checkpoint, device='cpu'),
        image,
        tmp_path / 'config',
    )
    np.testing.assert_allclose(alone['bboxes'], with_config['bboxes'], atol=1e-3)
    assert alone['labels'] == with_config['labels']


def test_seg_inferencer_with_config_and_checkpoint(image, tmp_path):
    from mmseg.apis import MMSegInferencer

    checkpoint, classes = random_checkpoint(SEG_CONFIG, tmp_path / 'random.pth')
    inferencer = MMSegInferencer(model=SEG_CONFIG, weights=checkpoint, device='cpu')
    assert inferencer.model.backbone.__class__.__name__ == 'DSNet'
    results = inferencer(image, out_dir=str(tmp_path / 'out'))
    labels = results['predictions']
    assert labels.shape == (96, 128)
    assert set(np.unique(labels)) <= set(range(len(classes)))
    drawn = mmcv.imread(str(tmp_path / 'out' / 'vis' / 'shapes.png'))
    assert drawn.shape == (96, 128, 3)
    saved = mmcv.imread(str(tmp_path / 'out' / 'pred' / '00000000_pred.png'), 'unchanged')
    np.testing.assert_array_equal(saved, labels)
