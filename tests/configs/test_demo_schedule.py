"""The demo configs keep one schedule in epochs for any number of processes:
the warm-up ends before the run does, at the same share of it.

The schedule is built the way mmengine's Runner builds it for training (its
train loop over the demo data with DefaultSampler at the given world size, and
its param schedulers, epoch-based ones converted to iterations), then stepped
as ParamSchedulerHook steps it. Only the world size seen by the sampler is
faked; nothing is trained.
"""

import os.path as osp
from unittest import mock

import pytest
import torch
from helpers import REPO_ROOT
from mmengine.config import Config

CONFIGS = {
    'det': ('configs/demo/mask_rcnn_dsnet_t_dsfpn_demo.py', 'coco'),
    'seg': ('configs/demo/fpn_dsnet-t_demo-seg.py', 'seg'),
    'cls': ('configs/demo/dsnet-t_demo-cls.py', 'cls'),
}
NUM_TRAIN = 64  # make_demo_data's default, what `make demo` trains on
TRAIN_PER_CLASS = 100  # make_demo_data --task cls's default (300 images)


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    from mmdsnet.demo.synthetic_data import generate_cls_data, generate_demo_data

    root = tmp_path_factory.mktemp('demo_data')
    generate_demo_data(str(root), num_train=NUM_TRAIN, num_val=4)
    generate_cls_data(str(root / 'cls'), train_per_class=TRAIN_PER_CLASS, val_per_class=1)
    return root


def build_schedule(task, world_size, demo_root, work_dir):
    """(train loop, param schedulers, config) of the demo config at ``world_size``."""
    from mmengine.runner import Runner

    if task == 'cls':
        pytest.importorskip('mmpretrain', reason='the classification demo needs mmpretrain')

    path, subdir = CONFIGS[task]
    cfg = Config.fromfile(osp.join(REPO_ROOT, path))
    cfg.train_dataloader.dataset.data_root = osp.join(str(demo_root), subdir) + '/'
    runner = Runner(
        model=torch.nn.Linear(1, 1),
        work_dir=str(work_dir),
        train_dataloader=cfg.train_dataloader,
        train_cfg=cfg.train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=1.0)),
        param_scheduler=cfg.param_scheduler,
        default_scope=cfg.default_scope,
    )
    with mock.patch('mmengine.dataset.sampler.get_dist_info', return_value=(0, world_size)):
        loop = runner.train_loop  # builds the dataloader: the sampler sees world_size
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    schedulers = runner.build_param_scheduler(cfg.param_scheduler)
    return loop, schedulers, cfg


def lr_per_iteration(loop, schedulers, optim_wrapper):
    """The lr of every training iteration, stepping like ParamSchedulerHook."""
    lrs = []
    for _ in range(loop.max_epochs):
        for _ in range(len(loop.dataloader)):
            lrs.append(optim_wrapper.get_lr()['lr'][0])
            for scheduler in schedulers:
                if not scheduler.by_epoch:
                    scheduler.step()
        for scheduler in schedulers:
            if scheduler.by_epoch:
                scheduler.step()
    return lrs


@pytest.mark.parametrize('task', sorted(CONFIGS))
@pytest.mark.parametrize('world_size', [1, 2, 8])
def test_warmup_shorter_than_run(task, world_size, demo_root, tmp_path, drop_runner_globals):
    loop, schedulers, cfg = build_schedule(task, world_size, demo_root, tmp_path)
    # DefaultSampler pads the images (mmdet keeps the 57 with objects; cls: 300) to equal
    # shards, one per process; the last batch of a shard may be short.
    shard = -(-len(loop.dataloader.dataset) // world_size)
    per_epoch = -(-shard // cfg.train_dataloader.batch_size)
    assert len(loop.dataloader) == per_epoch
    # The run is counted in epochs: the same number whatever the world size.
    assert loop.max_epochs == cfg.train_cfg.max_epochs
    assert loop.max_iters == cfg.train_cfg.max_epochs * per_epoch

    warmup = schedulers[0]
    assert type(warmup).__name__ == 'LinearLR' and not warmup.by_epoch
    assert warmup.begin == 0
    assert 0 < warmup.end < loop.max_iters
    # The warm-up is the same share of the run at every world size (up to
    # rounding to whole iterations).
    share = cfg.warmup_epochs / cfg.train_cfg.max_epochs
    assert abs(warmup.end / loop.max_iters - share) <= 1 / loop.max_iters

    lrs = lr_per_iteration(loop, schedulers, loop.runner.optim_wrapper)
    assert len(lrs) == loop.max_iters
    # lr rises from the warm-up's start factor to its peak in the warm-up's last
    # epoch (an epoch-wise decay may already act on it), then only falls.
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert warmup.end - per_epoch <= peak <= warmup.end
    assert lrs[0] == pytest.approx(warmup.start_factor, rel=0.05)
    assert lrs[peak] > 0.5
    assert all(a >= b for a, b in zip(lrs[warmup.end :], lrs[warmup.end + 1 :]))
    assert lrs[-1] < 0.1 * lrs[peak]


def test_eight_processes_get_a_real_warmup(demo_root, tmp_path, drop_runner_globals):
    """The case that failed before: 8 processes, 40 iterations in all."""
    loop, schedulers, _ = build_schedule('det', 8, demo_root, tmp_path)
    assert (loop.max_iters, schedulers[0].end) == (40, 12)
