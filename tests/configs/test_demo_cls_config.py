"""The classification demo config (configs/demo/dsnet-t_demo-cls.py) builds under
mmpretrain and trains: one short epoch with validation on a tiny generated
image folder, logging what tools/demo/demo_summary.py reads."""

import glob
import json
import os.path as osp

import pytest
from helpers import REPO_ROOT, load_tool

pytest.importorskip('mmpretrain', reason='the classification demo needs mmpretrain')

CONFIG = osp.join(REPO_ROOT, 'configs', 'demo', 'dsnet-t_demo-cls.py')


def test_demo_classifier_trains_and_validates(tmp_path, drop_runner_globals):
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmdsnet.demo.synthetic_data import CLS_CLASSES, generate_cls_data

    data = tmp_path / 'cls'
    generate_cls_data(str(data), train_per_class=2, val_per_class=1)
    cfg = Config.fromfile(CONFIG)
    assert cfg.default_scope == 'mmpretrain' and cfg.classes == CLS_CLASSES
    assert cfg.model.head.num_classes == len(CLS_CLASSES)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(data)
        cfg[loader].batch_size = 3
    cfg.train_cfg.max_epochs = 1
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()

    assert type(runner.model.backbone).__name__ == 'DSNet'
    assert runner.train_dataloader.dataset.metainfo['classes'] == CLS_CLASSES
    scalars = glob_one(osp.join(cfg.work_dir, '*', 'vis_data', 'scalars.json'))
    records = [json.loads(line) for line in open(scalars)]
    assert len([r for r in records if 'loss' in r]) == 2  # 6 images, 3 per step
    # The validation metric is the one the demo summary checks and draws.
    summary = load_tool('tools/demo/demo_summary.py')
    key = summary.THRESHOLDS['cls'][0]
    assert summary.CURVE_METRICS['cls'] == (key,)
    top1 = [r[key] for r in records if key in r]
    assert len(top1) == 1 and 0 <= top1[0] <= 100


def glob_one(pattern):
    found = glob.glob(pattern)
    assert len(found) == 1, found
    return found[0]
