"""Tests for the Runner checkpoint loaders and CPU distributed patches of
mmdsnet.engine, and the train/test tools (CPU only).

* Runner checkpoints load with ``torch.load(weights_only=True)`` once mmdsnet
  is imported, and resume continues exactly where training stopped.
* ``tools/train.py`` on one process and ``tools/dist_train.sh`` on two CPU
  processes (gloo) give the same weights and losses for the same global
  batch; ``tools/test.py`` evaluates and dumps the result.
* ``patch_cpu_distributed`` uses gloo / CPU DDP, reverts SyncBN, and does
  nothing when an accelerator is present.
"""

import json
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import REPO_ROOT, TESTS_ROOT, free_port
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner
from toy_task import ToyRegressionDataset, ToyRegressor

import mmdsnet  # noqa: F401  (registers the checkpoint safe globals)
from mmdsnet.engine import load_from_local_weights_only

PYTHON = sys.executable
CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.usefixtures('drop_runner_globals')


# --------------------------------------------------------------------------
# (a) weights_only loading and resume, in-process Runner
# --------------------------------------------------------------------------
class RecordHook(Hook):
    """Remember the loop position and weights when training (re)starts."""

    def __init__(self):
        self.at_start = None

    def before_train(self, runner):
        self.at_start = dict(
            epoch=runner.epoch,
            iter=runner.iter,
            state_dict={k: v.clone() for k, v in runner.model.state_dict().items()},
            n_loss=len(runner.message_hub.get_scalar('train/loss').data[0])
            if 'train/loss' in runner.message_hub.log_scalars
            else 0,
        )


def _make_runner(work_dir, name, max_epochs, resume=False, hook=None):
    return Runner(
        model=ToyRegressor(),
        work_dir=str(work_dir),
        experiment_name=name,  # distinct MessageHub/logger per runner
        train_dataloader=dict(
            dataset=ToyRegressionDataset(n=8),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            num_workers=0,
            collate_fn=dict(type='default_collate'),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1),
            logger=dict(type='LoggerHook', interval=1),
        ),
        custom_hooks=[hook] if hook is not None else None,
        randomness=dict(seed=0),
        resume=resume,
    )


@pytest.mark.integration
def test_runner_checkpoint_weights_only_and_resume(tmp_path):
    work = tmp_path / 'resume'
    runner = _make_runner(work, 'compat_first', max_epochs=2)
    runner.train()
    ckpt_path = work / 'epoch_2.pth'

    # weights_only load through mmengine's loader (mmdsnet allows the types there).
    ckpt = load_from_local_weights_only(str(ckpt_path), 'cpu')
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 8
    loss_buf = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss_buf, HistoryBuffer)
    assert len(loss_buf.data[0]) == 8

    # Without mmdsnet the same load fails: the allowlist is what fixes it.
    proc = subprocess.run(
        [
            PYTHON,
            '-c',
            'import sys, torch; torch.load(sys.argv[1], weights_only=True)',
            str(ckpt_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert 'Unsupported global' in proc.stderr

    # Resume to 3 epochs: continues from epoch 2 with the saved state.
    hook = RecordHook()
    resumed = _make_runner(work, 'compat_resumed', max_epochs=3, resume=True, hook=hook)
    resumed.train()
    start = hook.at_start
    assert (start['epoch'], start['iter']) == (2, 8)
    assert start['n_loss'] == 8  # MessageHub history came back too
    assert start['state_dict'].keys() == ckpt['state_dict'].keys()
    for key, value in ckpt['state_dict'].items():
        assert torch.equal(start['state_dict'][key], value), key
    assert (resumed.epoch, resumed.iter) == (3, 12)

    # Same result as 3 epochs without interruption (optimizer momentum is
    # restored as well, not only the weights).
    straight = _make_runner(tmp_path / 'straight', 'compat_straight', 3)
    straight.train()
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, atol=1e-6, rtol=0)


class _CallGetattr:
    """Pickles as ``getattr(target, name)`` (protocol 2 REDUCE)."""

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return getattr, (self.target, self.name)


def test_getattr_allowlist_is_restricted(tmp_path):
    allowed = tmp_path / 'allowed.pth'
    torch.save({'m': _CallGetattr(HistoryBuffer, 'mean')}, allowed)
    assert load_from_local_weights_only(str(allowed))['m'] is HistoryBuffer.mean

    denied = tmp_path / 'denied.pth'
    torch.save({'m': _CallGetattr(HistoryBuffer, '__init__')}, denied)
    with pytest.raises(pickle.UnpicklingError):
        load_from_local_weights_only(str(denied))


# --------------------------------------------------------------------------
# (b) tools/train.py (1 process) vs tools/dist_train.sh (2 CPU processes)
# --------------------------------------------------------------------------
TOY_CONFIG = """
custom_imports = dict(imports=['toy_task'], allow_failed_imports=False)
model = dict(type='ToyRegressor')
_loader = dict(
    batch_size=4,
    num_workers=0,
    dataset=dict(type='ToyRegressionDataset', n=16),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'))
train_dataloader = _loader
test_dataloader = _loader
test_evaluator = dict(type='ToyMSE')
test_cfg = dict(type='TestLoop')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False, window_size=1)
# as in mmdet/mmseg configs; mmdsnet.engine switches to gloo on CPU
env_cfg = dict(dist_cfg=dict(backend='nccl'))
randomness = dict(seed=0)
"""


def _run(cmd, env, timeout=150):
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f'{cmd} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}'
        f'\n--- stderr\n{proc.stderr[-6000:]}'
    )
    return proc


def _scalars(work_dir):
    """Per-iteration logged values from LocalVisBackend's scalars.json."""
    found = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            found.append(osp.join(root, 'scalars.json'))
    assert len(found) == 1, found
    with open(found[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row['iter']: row for row in rows if 'global_mse' in row}


@pytest.fixture(scope='module')
def toy_project(tmp_path_factory):
    """The toy config, and an env whose PYTHONPATH finds tests/toy_task.py."""
    root = tmp_path_factory.mktemp('toy_project')
    config = root / 'toy_config.py'
    config.write_text(TOY_CONFIG)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (TESTS_ROOT, env.get('PYTHONPATH')) if p)
    env['PYTHON'] = PYTHON
    env.pop('OMP_NUM_THREADS', None)
    return root, config, env


@pytest.fixture(scope='module')
def single_run(toy_project):
    """tools/train.py, launcher none, batch 4 on one process."""
    root, config, env = toy_project
    work = root / 'work_single'
    _run(
        [
            PYTHON,
            'tools/train.py',
            str(config),
            '--work-dir',
            str(work),
            '--cfg-options',
            'train_dataloader.batch_size=4',
        ],
        env,
    )
    return work


@pytest.mark.skipif(CUDA, reason='checks the CPU (gloo) path')
@pytest.mark.integration
def test_train_single_vs_dist_cpu(toy_project, single_run):
    root, config, env = toy_project
    work_dist = root / 'work_dist'
    env = dict(env, PORT=str(free_port()))
    proc = _run(
        [
            'bash',
            'tools/dist_train.sh',
            str(config),
            '2',
            '--work-dir',
            str(work_dist),
            '--cfg-options',
            'train_dataloader.batch_size=2',
        ],
        env,
    )
    out = proc.stdout + proc.stderr
    assert 'gloo' in out  # patch_cpu_distributed warned that nccl was replaced

    single = load_from_local_weights_only(str(single_run / 'iter_4.pth'))
    dist = load_from_local_weights_only(str(work_dist / 'iter_4.pth'))
    assert single['meta']['iter'] == dist['meta']['iter'] == 4
    init = ToyRegressor().state_dict()
    for key, value in single['state_dict'].items():
        assert not torch.allclose(value, init[key])  # it did train
        torch.testing.assert_close(dist['state_dict'][key], value, atol=1e-6, rtol=0)

    # Logged losses: the 2-process mean of each step equals the 1-process
    # loss over the same 4 samples (and both runs logged 4 steps).
    single_log, dist_log = _scalars(single_run), _scalars(work_dist)
    assert sorted(single_log) == sorted(dist_log) == [1, 2, 3, 4]
    for step in single_log:
        assert single_log[step]['loss'] == pytest.approx(single_log[step]['global_mse'], abs=1e-6)
        assert dist_log[step]['global_mse'] == pytest.approx(
            single_log[step]['loss'], rel=1e-6, abs=1e-6
        )


@pytest.mark.integration
def test_tools_test_out(toy_project, single_run):
    root, config, env = toy_project
    out_file = root / 'preds.pkl'
    proc = _run(
        [
            PYTHON,
            'tools/test.py',
            str(config),
            str(single_run / 'iter_4.pth'),
            '--work-dir',
            str(root / 'work_test'),
            '--out',
            str(out_file),
        ],
        env,
    )
    assert 'mse:' in proc.stdout + proc.stderr
    with open(out_file, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 16 and set(preds[0]) == {'pred', 'target'}


@pytest.mark.integration
def test_train_amp_on_cpu_says_gpu_needed(toy_project):
    if CUDA:
        pytest.skip('AMP is available with a GPU')
    root, config, env = toy_project
    proc = subprocess.run(
        [PYTHON, 'tools/train.py', str(config), '--work-dir', str(root / 'work_amp'), '--amp'],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert 'needs a GPU' in proc.stderr


# --------------------------------------------------------------------------
# patch_cpu_distributed details (fresh interpreters: it patches globally)
# --------------------------------------------------------------------------
SYNCBN_SCRIPT = """
import os, sys
os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                  MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[2])
import torch
from torch import nn
from mmengine.model import BaseModel, MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from mmdsnet.engine import patch_cpu_distributed

assert patch_cpu_distributed() is True
assert patch_cpu_distributed() is True  # idempotent


class Net(BaseModel):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.SyncBatchNorm(4)

    def forward(self, inputs, mode='tensor'):
        out = self.bn(self.conv(inputs))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


runner = Runner(model=Net(), work_dir=sys.argv[1], launcher='pytorch',
                env_cfg=dict(dist_cfg=dict(backend='nccl')),
                cfg=dict(sync_bn='torch'))
assert torch.distributed.get_backend() == 'gloo'
assert isinstance(runner.model, MMDistributedDataParallel)
assert runner.model.device_ids is None
assert not any(isinstance(m, nn.SyncBatchNorm) for m in runner.model.modules())
optim = OptimWrapper(torch.optim.SGD(runner.model.parameters(), lr=0.1))
log_vars = runner.model.train_step(dict(inputs=torch.randn(2, 3, 4, 4)), optim)
assert torch.isfinite(log_vars['loss'])
torch.distributed.destroy_process_group()
print('SYNCBN_OK')
"""

GPU_NOOP_SCRIPT = """
import mmengine.device.utils as device_utils
device_utils.DEVICE = 'cuda'  # pretend mmengine found a GPU
import mmengine.dist.utils as dist_utils
from mmengine.runner import Runner
init_before, wrap_before = dist_utils._init_dist_pytorch, Runner.wrap_model
from mmdsnet.engine import patch_cpu_distributed
assert patch_cpu_distributed() is False
assert dist_utils._init_dist_pytorch is init_before
assert Runner.wrap_model is wrap_before
print('NOOP_OK')
"""


@pytest.mark.skipif(CUDA, reason='checks the CPU (gloo) path')
@pytest.mark.integration
def test_patch_cpu_distributed_gloo_and_syncbn(tmp_path):
    script = tmp_path / 'syncbn.py'
    script.write_text(textwrap.dedent(SYNCBN_SCRIPT))
    proc = subprocess.run(
        [PYTHON, str(script), str(tmp_path / 'work'), str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and 'SYNCBN_OK' in out, out[-6000:]
    assert 'converted to BatchNorm' in out
    assert 'using the gloo backend' in out


@pytest.mark.integration
def test_patch_cpu_distributed_noop_with_gpu(tmp_path):
    proc = subprocess.run(
        [PYTHON, '-c', GPU_NOOP_SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert proc.returncode == 0 and 'NOOP_OK' in proc.stdout, proc.stderr
