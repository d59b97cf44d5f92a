"""Issue 20, items 6 and 7: saves on a full disk, and two runs in one work dir."""

import errno
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO_ROOT, TESTS_ROOT, load_tool

TOY_CONFIG = """
custom_imports = dict(imports=['toy_task', 'slow_hook'], allow_failed_imports=False)
model = dict(type='ToyRegressor')
train_dataloader = dict(
    batch_size=4, num_workers=0, dataset=dict(type='ToyRegressionDataset', n=16),
    sampler=dict(type='DefaultSampler', shuffle=False), collate_fn=dict(type='default_collate'))
train_cfg = dict(by_epoch=True, max_epochs={epochs})
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1),
                     logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='SlowHook', seconds={seconds})]
randomness = dict(seed=0)
"""

SLOW_HOOK = """
import time
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SlowHook(Hook):
    def __init__(self, seconds):
        self.seconds = seconds

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        time.sleep(self.seconds)
"""


@pytest.fixture
def small_disk(monkeypatch):
    """Local file writes of checkpoints see a disk that holds 1.5 checkpoints:
    the first save fits, a second one beside it does not. A write that does
    not fit writes what fits, then raises ENOSPC, as a real full disk does."""
    from mmengine.fileio import LocalBackend

    capacity = {}

    def put(self, obj, filepath):
        directory = osp.dirname(filepath)
        capacity.setdefault(directory, int(len(obj) * 1.5))
        used = sum(
            osp.getsize(osp.join(directory, name))
            for name in os.listdir(directory)
            if name.endswith(('.pth', '.partial'))
        )
        room = max(capacity[directory] - used, 0)
        with open(filepath, 'wb') as f:
            f.write(obj[:room])
        if len(obj) > room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filepath)

    monkeypatch.setattr(LocalBackend, 'put', put)


@pytest.mark.integration
def test_full_disk_save_keeps_the_last_checkpoint_and_says_what_it_needs(
    tmp_path, small_disk, drop_runner_globals
):
    from mmengine.runner import Runner
    from toy_task import ToyRegressor  # noqa: F401 (registers the toy task)

    from mmdsnet.cli import build_runner

    work = tmp_path / 'work'
    cfg = TOY_CONFIG.format(epochs=3, seconds=0).replace("'slow_hook'", '')
    cfg = cfg.replace("custom_hooks = [dict(type='SlowHook', seconds=0)]", '')
    (tmp_path / 'cfg.py').write_text(cfg)
    from mmengine.config import Config

    config = Config.fromfile(str(tmp_path / 'cfg.py'))
    config.work_dir = str(work)
    config.experiment_name = 'full_disk'
    runner = build_runner(config)
    assert isinstance(runner, Runner)
    with pytest.raises(OSError, match='bytes free') as raised:
        runner.train()
    message = str(raised.value)
    first = work / 'epoch_1.pth'
    assert f'about {first.stat().st_size} bytes free' in message
    assert 'one checkpoint more than max_keep_ckpts (1)' in message
    assert raised.value.errno == errno.ENOSPC
    assert not [p for p in os.listdir(work) if p.endswith('.partial')]
    assert not (work / 'epoch_2.pth').exists()
    assert (work / 'last_checkpoint').read_text() == str(first)
    state = torch.load(first, weights_only=False)
    assert state['meta']['epoch'] == 1 and 'fc.weight' in state['state_dict']


def test_train_tool_cleans_interrupted_saves_before_building_the_runner(tmp_path, monkeypatch):
    """On a full disk the Runner's first writes (config dump, logs) fail, so the
    space of a partial checkpoint must be freed before the Runner is built."""
    work = tmp_path / 'work'
    work.mkdir()
    partial = work / 'epoch_2.pth.partial'
    partial.write_bytes(b'x' * 1000)
    (tmp_path / 'cfg.py').write_text('work_dir = None\n')
    tool = load_tool('tools/train.py')
    seen = {}

    def full_disk_runner(cfg):
        seen['partial left'] = partial.exists()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(work / 'cfg.py'))

    monkeypatch.setattr(tool, 'build_runner', full_disk_runner)
    with pytest.raises(OSError):
        tool.main([str(tmp_path / 'cfg.py'), '--work-dir', str(work), '--resume'])
    assert seen == {'partial left': False}


def toy_env(tmp_path):
    (tmp_path / 'slow_hook.py').write_text(SLOW_HOOK)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (TESTS_ROOT, str(tmp_path), env.get('PYTHONPATH')) if p
    )
    return env


def train(config, work, env, *extra, wait=True):
    cmd = [sys.executable, 'tools/train.py', str(config), '--work-dir', str(work), *extra]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('dangling', [False, True])
def test_lock_never_follows_a_link_nor_writes_through_it(tmp_path, dangling):
    from mmdsnet.engine import WorkDirLockError, lock_work_dir
    from mmdsnet.engine.work_dir_lock import LOCK_NAME

    work = tmp_path / 'work'
    work.mkdir()
    victim = tmp_path / 'bashrc'
    if not dangling:
        victim.write_text('export PATH=~/bin:$PATH\n')
    (work / LOCK_NAME).symlink_to(victim)
    with pytest.raises(WorkDirLockError, match=f'{work / LOCK_NAME} is a symbolic link'):
        lock_work_dir(str(work))
    if dangling:
        assert not victim.exists()  # the link's target is not created
    else:
        assert victim.read_text() == 'export PATH=~/bin:$PATH\n'


@pytest.mark.parametrize(
    'make, what',
    [
        (lambda p: p.mkdir(), 'a directory'),
        (lambda p: os.mkfifo(p), 'not a regular file'),
        (lambda p: p.write_text('# notes\n'), 'a file holding something other than a pid'),
        (lambda p: os.link(p.parent / 'other', p), 'a file with 2 hard links'),
    ],
)
def test_lock_refuses_a_path_that_is_not_a_run_lock_and_names_it(tmp_path, make, what):
    from mmdsnet.engine import WorkDirLockError, lock_work_dir
    from mmdsnet.engine.work_dir_lock import LOCK_NAME

    (tmp_path / 'other').write_text('')
    path = tmp_path / LOCK_NAME
    make(path)
    before = path.read_text() if path.is_file() else None
    with pytest.raises(WorkDirLockError, match=f'{path} is {what}'):
        lock_work_dir(str(tmp_path))
    assert (path.read_text() if path.is_file() else None) == before


def test_train_tool_refuses_a_linked_lock_file_before_anything_else(tmp_path):
    from mmdsnet.engine.work_dir_lock import LOCK_NAME

    work = tmp_path / 'work'
    work.mkdir()
    (work / LOCK_NAME).symlink_to(tmp_path / 'bashrc')
    (tmp_path / 'cfg.py').write_text('work_dir = None\n')
    with pytest.raises(SystemExit, match=f'^tools/train.py: {work / LOCK_NAME} is a symbolic link'):
        load_tool('tools/train.py').main([str(tmp_path / 'cfg.py'), '--work-dir', str(work)])
    assert not (tmp_path / 'bashrc').exists()


def test_lock_rewrites_the_pid_of_an_earlier_run(tmp_path):
    from mmdsnet.engine import lock_work_dir, release_work_dir
    from mmdsnet.engine.work_dir_lock import LOCK_NAME

    (tmp_path / LOCK_NAME).write_text('123456789\n')
    try:
        assert lock_work_dir(str(tmp_path)) == str(tmp_path / LOCK_NAME)
        assert (tmp_path / LOCK_NAME).read_text() == f'{os.getpid()}\n'
    finally:
        release_work_dir(str(tmp_path))


def test_lock_warns_where_the_file_system_has_no_flock(tmp_path, monkeypatch):
    import fcntl

    from mmdsnet.engine import lock_work_dir

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, 'flock', no_flock)
    with pytest.warns(
        RuntimeWarning, match=f'work dir {tmp_path} is not locked: its file system does not'
    ):
        assert lock_work_dir(str(tmp_path)) == ''


def test_iteration_based_resume_warns_that_it_is_not_bit_exact():
    import warnings

    from mmengine.config import Config

    from mmdsnet.engine import use_epoch_seed_hook

    iters = Config(dict(train_cfg=dict(type='IterBasedTrainLoop', max_iters=10), resume=True))
    with pytest.warns(UserWarning, match='train loop is IterBasedTrainLoop: .* not bit-identical'):
        use_epoch_seed_hook(iters)
    assert 'custom_hooks' not in iters
    epochs = Config(dict(train_cfg=dict(by_epoch=True, max_epochs=2), resume=True))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        use_epoch_seed_hook(epochs)
    assert epochs.custom_hooks == [dict(type='EpochSeedHook')]


@pytest.mark.slow
@pytest.mark.integration
def test_second_run_in_a_live_work_dir_is_refused_and_a_killed_one_frees_it(tmp_path):
    env = toy_env(tmp_path)
    slow = tmp_path / 'slow.py'
    slow.write_text(TOY_CONFIG.format(epochs=1000, seconds=0.2))
    fast = tmp_path / 'fast.py'
    fast.write_text(TOY_CONFIG.format(epochs=1, seconds=0))
    work = tmp_path / 'work'
    first = train(slow, work, env, wait=False)
    try:
        deadline = time.time() + 240
        while not (work / 'last_checkpoint').exists():  # training, past its start-up
            assert first.poll() is None, 'the first run ended early'
            assert time.time() < deadline, 'the first run saved nothing in 240 s'
            time.sleep(0.5)
        # A save in progress of the first run must survive the second's start-up.
        marker = work / 'epoch_999.pth.partial'
        marker.write_bytes(b'in progress')
        second = train(fast, work, env)
        output = second.stdout + second.stderr
        assert second.returncode != 0, output[-2000:]
        assert f'work dir {work} is in use by another training run (pid {first.pid}' in output
        assert marker.exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run's lock went with its process: the next run trains.
    third = train(fast, work, env)
    assert third.returncode == 0, (third.stdout + third.stderr)[-2000:]
    # It trained from scratch (the killed run had saved later epochs).
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    assert not marker.exists()  # and it cleaned the dead run's partial file


NOISY_DATA = """
import random

import numpy as np
import torch
from mmengine.registry import DATASETS
from toy_task import ToyRegressionDataset


@DATASETS.register_module()
class NoisyToyDataset(ToyRegressionDataset):
    '''Random augmentation from the three global generators, as mmcv's
    transforms (numpy), some mmdet ones (random) and the model (torch) draw.'''

    def __getitem__(self, idx):
        item = super().__getitem__(idx)
        noise = np.random.randn(4) * 0.1 + random.random() * 0.1
        item['inputs'] = item['inputs'] + torch.from_numpy(noise).float() + torch.rand(4) * 0.1
        return item
"""


@pytest.mark.slow
@pytest.mark.integration
def test_resumed_run_with_random_augmentation_ends_like_the_uninterrupted_one(tmp_path):
    """Issue 20, item 12: train 3 epochs; separately resume from the epoch-1
    checkpoint (as after a kill in epoch 2); the final weights must be equal."""
    env = toy_env(tmp_path)
    (tmp_path / 'noisy_data.py').write_text(NOISY_DATA)
    config = tmp_path / 'noisy.py'
    config.write_text(
        TOY_CONFIG.format(epochs=3, seconds=0)
        .replace("'slow_hook'", "'slow_hook', 'noisy_data'")
        .replace("type='ToyRegressionDataset'", "type='NoisyToyDataset'")
        .replace('shuffle=False', 'shuffle=True')
        .replace('max_keep_ckpts=1', 'max_keep_ckpts=3')
    )
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    done = train(config, full, env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    resumed.mkdir()
    first = torch.load(full / 'epoch_1.pth', weights_only=False)
    torch.save(first, resumed / 'epoch_1.pth')
    (resumed / 'last_checkpoint').write_text(str(resumed / 'epoch_1.pth'))
    again = train(config, resumed, env, '--resume')
    assert again.returncode == 0, (again.stdout + again.stderr)[-2000:]
    assert 'resumed epoch: 1' in again.stdout + again.stderr
    a = torch.load(full / 'epoch_3.pth', weights_only=False)['state_dict']
    b = torch.load(resumed / 'epoch_3.pth', weights_only=False)['state_dict']
    assert all(torch.equal(a[k], b[k]) for k in a), {k: (a[k] - b[k]).abs().max() for k in a}
