"""The ImageNet-1k configs (configs/dsnet-*_8xb128_in1k.py) in mmpretrain: the public
classifier, a training step, mmpretrain's own tools, our tools/test.py and the inferencer."""

import os
import os.path as osp
import pickle
import re
import sys

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, Started, load_tool

from mmdsnet.checkpoint import convert_file, dsnet_classifier_convert
from mmdsnet.models import DSNet
from mmdsnet.testing import randomize_norm_stats, reference_for

pytest.importorskip('mmpretrain', reason='the ImageNet-1k configs need mmpretrain (optional)')
import mmpretrain  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmpretrain.registry import DATASETS, MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402

# A scope an earlier test left current (e.g. 'mmseg') would send builds to its registries.
pytestmark = pytest.mark.usefixtures('mmpretrain_scope')

MMPRETRAIN_TOOLS = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools')
T_CONFIG = osp.join(REPO_ROOT, 'configs', 'dsnet-t_8xb128_in1k.py')


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def build(cfg):
    """The model as the Runner builds it (the config's data_preprocessor merged in)."""
    return MODELS.build(dict(cfg.model, data_preprocessor=cfg.data_preprocessor))


def test_config_builds_the_public_classifier(cls_config_path):
    """Same parameters and the same tensors as the public classifier of its arch."""
    cfg = Config.fromfile(cls_config_path)
    model = build(cfg)
    backbone = model.backbone
    assert isinstance(backbone, DSNet) and backbone.final_norm and backbone.out_indices == (3,)
    arch = cfg.model.backbone.arch
    public = reference_for(arch)
    assert n_params(model) == n_params(public)
    assert set(model.state_dict()) == set(dsnet_classifier_convert(public.state_dict()))


def test_training_step_through_the_config(tmp_path):
    """One optimiser step of DS-Net-T with the config's preprocessing (Mixup/CutMix,
    one-hot labels), label-smoothed loss and AdamW: every parameter moves."""
    torch.manual_seed(0)
    cfg = Config.fromfile(T_CONFIG)
    model = build(cfg).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = dict(
        inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(4)],
        data_samples=[DataSample().set_gt_label(label) for label in (3, 1, 999, 3)],
    )
    log_vars = model.train_step(data, optim_wrapper)
    assert torch.isfinite(log_vars['loss'])
    frozen = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert not frozen, frozen[:5]
    assert model.backbone.norm.num_batches_tracked.item() == 1


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A public DS-Net-T converted with --classifier, 4 images labelled with the
    public model's own top-1 (so a correct evaluation scores 100), and a config
    derived from dsnet-t_8xb128_in1k.py for them (64 px, 2 images a batch)."""
    root = tmp_path_factory.mktemp('cls_run')
    torch.manual_seed(0)
    public = reference_for('tiny').eval()
    randomize_norm_stats(public, seed=5)
    torch.save({'model': public.state_dict()}, root / 'public.pth')
    checkpoint = str(root / 'dsnet_t_cls.pth')
    convert_file(str(root / 'public.pth'), checkpoint, classifier=True)
    images = root / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    names = [f'img{i}.png' for i in range(4)]
    import cv2

    for name in names:
        cv2.imwrite(str(images / name), rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))

    cfg = Config.fromfile(T_CONFIG)
    for entry in cfg.train_dataloader.dataset.pipeline:
        if entry['type'] == 'RandomResizedCrop':
            entry['scale'] = 64
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='ResizeEdge', scale=73, edge='short', backend='pillow', interpolation='bicubic'),
        dict(type='CenterCrop', crop_size=64),
        dict(type='PackInputs'),
    ]
    data = dict(type='CustomDataset', data_root=str(root), ann_file='labels.txt')
    data = dict(data, data_prefix='images', with_label=True)
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        loader.batch_size, loader.num_workers, loader.persistent_workers = 2, 0, False
        pipeline = loader.dataset.pipeline if split == 'train' else test_pipeline
        loader.dataset = dict(data, pipeline=pipeline)
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=10)
    cfg.param_scheduler = [cfg.param_scheduler[0]]  # the warm-up, over the one epoch
    cfg.param_scheduler[0].end = 1
    cfg.default_hooks.logger.interval = 1
    config = str(root / 'dsnet-t_tiny.py')
    cfg.dump(config)

    (root / 'labels.txt').write_text(''.join(f'{n} 0\n' for n in names))
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # module fixture: no mmpretrain_scope
        dataset = DATASETS.build(dict(data, pipeline=test_pipeline))
        preprocess = MODELS.build(dict(cfg.data_preprocessor, type='ClsDataPreprocessor'))
    batch = preprocess(dict(inputs=[dataset[i]['inputs'] for i in range(4)]))['inputs']
    with torch.no_grad():
        labels = public(batch).argmax(1).tolist()
    assert len(set(labels)) > 1, labels  # a wrong weight or pipeline changes some
    (root / 'labels.txt').write_text(''.join(f'{n} {k}\n' for n, k in zip(names, labels)))
    return dict(root=root, config=config, checkpoint=checkpoint, labels=labels, names=names)


def start_mmpretrain_tool(tool, *args, cwd):
    """mmpretrain's own ``tools/<tool>`` in the background, on one thread (the
    test's own run shares the cores meanwhile)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS='1')
    command = [sys.executable, osp.join(MMPRETRAIN_TOOLS, tool), *map(str, args)]
    return Started(command, cwd=cwd, env=env)


@pytest.mark.integration
def test_mmpretrain_train_tool_trains_the_config(tiny_run):
    """mmpretrain's own tools/train.py imports mmdsnet through custom_imports and
    trains (RandAugment, random erasing, repeated augmentation, Mixup/CutMix, EMA);
    so does ours."""
    work_dir = tiny_run['root'] / 'train'
    theirs = start_mmpretrain_tool(
        'train.py', tiny_run['config'], '--work-dir', work_dir, cwd=tiny_run['root']
    )
    # Our tools/train.py runs the same config (default_scope='mmpretrain').
    ours = tiny_run['root'] / 'ours_train'
    load_tool('tools/train.py').main([tiny_run['config'], '--work-dir', str(ours)])
    assert (ours / 'epoch_1.pth').is_file()
    result = theirs.result(timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r'Epoch\(train\) \[1\]\[2/2\] .* loss: \d', result.stdout + result.stderr)
    saved = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert 'backbone.norm.running_mean' in saved['state_dict'] and 'ema_state_dict' in saved


@pytest.mark.integration
def test_evaluation_reproduces_the_public_predictions(tiny_run):
    """The converted classifier scores 100% top-1 on images labelled with the public
    model's predictions: through mmpretrain's tools/test.py, ours, and the inferencer."""
    root = tiny_run['root']
    theirs = start_mmpretrain_tool(
        'test.py', tiny_run['config'], tiny_run['checkpoint'], '--work-dir', root / 'test', cwd=root
    )
    out = root / 'predictions.pkl'
    load_tool('tools/test.py').main(
        [
            tiny_run['config'],
            tiny_run['checkpoint'],
            '--work-dir',
            str(root / 'ours'),
            '--out',
            str(out),
        ]
    )
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert [int(p['pred_label'][0]) for p in predictions] == tiny_run['labels']

    from mmpretrain.apis import ImageClassificationInferencer

    inferencer = ImageClassificationInferencer(
        tiny_run['config'], pretrained=tiny_run['checkpoint'], device='cpu'
    )
    results = inferencer([str(root / 'images' / name) for name in tiny_run['names']])
    assert [r['pred_label'] for r in results] == tiny_run['labels']
    result = theirs.result(timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'accuracy/top1: 100.0000' in result.stdout + result.stderr
