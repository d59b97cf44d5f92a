"""Every segmentation config parses, builds a segmentor under mmseg's scope,
and runs loss and predict forwards; so does the README's stock-mmseg example."""

import os.path as osp

import pytest
import torch
from helpers import REPO_ROOT
from mmengine.config import Config
from mmengine.structures import PixelData

import mmdsnet  # noqa: F401
from mmdsnet.models import DSFPN, DSNet

pytestmark = pytest.mark.usefixtures('mmseg_scope')


def seg_inputs(batch, height, width, num_classes):
    from mmseg.structures import SegDataSample

    samples = []
    for _ in range(batch):
        sample = SegDataSample(
            metainfo=dict(
                img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width)
            )
        )
        labels = torch.randint(0, num_classes, (1, height, width))
        labels[:, :2] = 255  # some ignored pixels
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8) for _ in range(batch)]
    return dict(inputs=inputs, data_samples=samples)


def test_config_builds_and_runs(seg_config_path):
    from mmseg.registry import MODELS

    cfg = Config.fromfile(seg_config_path)
    # A fresh process (tools/train.py) finds DSNet only through this import.
    assert 'mmdsnet' in cfg.custom_imports['imports']
    cfg.model.backbone.init_cfg = None
    # The step runs on the small inputs below, not padded to the 512x512 crop.
    assert cfg.model.data_preprocessor.size == cfg.crop_size
    cfg.model.data_preprocessor.update(size=None, size_divisor=32)
    # Outside a distributed run SyncBN must become BN for CPU: build as the
    # Runner would, then revert.
    from mmengine.model import revert_sync_batchnorm

    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    assert isinstance(model.backbone, DSNet)
    # The neck's (or, without one, the decode head's) in_channels agree with
    # the backbone's outputs.
    first = cfg.model.neck if 'neck' in cfg.model else cfg.model.decode_head
    assert list(first.in_channels) == model.backbone.out_channels
    assert isinstance(getattr(model, 'neck', None), DSFPN) == ('dsfpn' in seg_config_path)
    num_classes = cfg.model.decode_head.num_classes
    model.train()
    data = model.data_preprocessor(seg_inputs(2, 64, 64, num_classes), training=True)
    total, log_vars = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(total) and total > 0, log_vars
    total.backward()
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(seg_inputs(1, 96, 160, num_classes))
        results = model(**data, mode='predict')
    assert results[0].pred_sem_seg.data.shape == (1, 96, 160)
    assert int(results[0].pred_sem_seg.data.max()) < num_classes


def test_readme_stock_mmseg_example(tmp_path):
    import re

    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    text = open(osp.join(REPO_ROOT, 'README.md')).read()
    match = re.search(r'<!-- stock-mmseg-example -->\s*```python\n(.*?)```', text, re.S)
    assert match, 'README lost its stock mmseg example block'
    config = tmp_path / 'fpn_dsnet.py'
    config.write_text(match.group(1))
    cfg = Config.fromfile(str(config))
    assert cfg.default_scope == 'mmseg'
    cfg.model.backbone.init_cfg = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    assert isinstance(model.backbone, DSNet)
    model.train()
    data = model.data_preprocessor(seg_inputs(1, 64, 96, 150), training=True)
    total, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(total)
