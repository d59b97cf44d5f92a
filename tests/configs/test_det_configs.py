"""Every detection config parses, builds, and runs loss and predict forwards;
the README's stock-mmdet example builds and runs too."""

import os.path as osp
import re

import pytest
import torch
from helpers import REPO_ROOT, config_paths
from mmengine.config import Config

import mmdsnet  # noqa: F401
from mmdsnet.models import DSFPN, DSNet

pytestmark = pytest.mark.usefixtures('mmdet_scope')


def run_detector(cfg_model, with_mask):
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs

    rcnn = cfg_model.get('train_cfg', {}).get('rcnn')
    if rcnn:  # 64 RoIs an image instead of 512: the step's cost, not what it checks
        rcnn.sampler.num = 64
    model = MODELS.build(cfg_model)
    model.init_weights()
    data = model.data_preprocessor(
        demo_mm_inputs(2, [[3, 128, 128], [3, 125, 130]], num_classes=3, with_mask=with_mask),
        training=True,
    )
    model.train()
    total, log_vars = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(total) and total > 0, log_vars
    total.backward()
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(
            demo_mm_inputs(1, [[3, 160, 96]], num_classes=3, with_mask=with_mask)
        )
        results = model(**data, mode='predict')
    assert len(results) == 1 and hasattr(results[0], 'pred_instances')
    return model, results[0]


def test_config_builds_and_runs(det_config_path):
    cfg = Config.fromfile(det_config_path)
    # A fresh process (tools/train.py) finds DSNet only through this import.
    assert 'mmdsnet' in cfg.custom_imports['imports']
    cfg.model.backbone.init_cfg = None
    model, result = run_detector(cfg.model, with_mask='mask_rcnn' in det_config_path)
    assert isinstance(model.backbone, DSNet)
    # The neck's in_channels agree with the backbone's outputs.
    assert list(cfg.model.neck.in_channels) == model.backbone.out_channels
    assert isinstance(model.neck, DSFPN) == ('dsfpn' in det_config_path)
    if 'mask_rcnn' in det_config_path:
        assert 'masks' in result.pred_instances


def readme_example():
    text = open(osp.join(REPO_ROOT, 'README.md')).read()
    match = re.search(r'<!-- stock-mmdet-example -->\s*```python\n(.*?)```', text, re.S)
    assert match, 'README lost its stock mmdet example block'
    return match.group(1)


def test_readme_stock_mmdet_example(tmp_path):
    config = tmp_path / 'faster_rcnn_dsnet.py'
    config.write_text(readme_example())
    cfg = Config.fromfile(str(config))
    assert cfg.model.type == 'FasterRCNN'
    cfg.model.backbone.init_cfg = None
    model, _ = run_detector(cfg.model, with_mask=False)
    assert isinstance(model.backbone, DSNet) and isinstance(model.neck, DSFPN)


def test_readme_and_metafile_paths_exist():
    import yaml

    text = open(osp.join(REPO_ROOT, 'README.md')).read()
    paths = set(re.findall(r'(?<![\w/])((?:configs|tools)/[\w./-]+\.(?:py|sh|yml))', text))
    assert paths, 'README names no configs/ or tools/ files'
    assert not [p for p in paths if not osp.exists(osp.join(REPO_ROOT, p))]
    with open(osp.join(REPO_ROOT, 'configs', 'metafile.yml')) as f:
        metafile = yaml.safe_load(f)
    configs = [model['Config'] for model in metafile['Models']]
    # Every shipped config (the demo's aside) is in the metafile, and only those.
    shipped = {osp.relpath(p, REPO_ROOT) for p in config_paths('*.py')}
    assert set(configs) == shipped, set(configs) ^ shipped
    assert not [c for c in configs if not osp.exists(osp.join(REPO_ROOT, c))]
    for model in metafile['Models']:
        assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
