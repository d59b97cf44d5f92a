"""Checkpoints under the project's tools: a save killed midway leaves a
complete checkpoint that --resume finds; tools/test.py refuses a checkpoint
that does not fit the model; Runner types are allowed in mmengine's loader
only, not in every torch.load of the process."""

import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO_ROOT, TESTS_ROOT, run_at_once

# Every test here starts processes or trains.
pytestmark = pytest.mark.integration

# A toy regressor whose 384 MB buffer makes each save take long enough to be
# killed while the file is being written.
BIG_MODEL = """
import torch
from mmengine.registry import MODELS
from toy_task import ToyRegressor


@MODELS.register_module()
class BigToyRegressor(ToyRegressor):

    def __init__(self):
        super().__init__()
        self.register_buffer('ballast', torch.ones(96 * 2**20))
"""

CONFIG = """
custom_imports = dict(imports=['toy_task', 'big_toy'], allow_failed_imports=False)
model = dict(type='{model}')
_loader = dict(
    batch_size=4, num_workers=0, dataset=dict(type='ToyRegressionDataset', n=16),
    sampler=dict(type='DefaultSampler', shuffle=False), collate_fn=dict(type='default_collate'))
train_dataloader = _loader
test_dataloader = _loader
test_evaluator = dict(type='ToyMSE')
test_cfg = dict(type='TestLoop')
train_cfg = dict(by_epoch=True, max_epochs=3)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
"""


@pytest.fixture
def toy_configs(tmp_path):
    (tmp_path / 'big_toy.py').write_text(BIG_MODEL)
    configs = {}
    for model in ('ToyRegressor', 'BigToyRegressor'):
        configs[model] = tmp_path / f'{model}.py'
        configs[model].write_text(CONFIG.format(model=model))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (TESTS_ROOT, str(tmp_path), env.get('PYTHONPATH')) if p
    )
    return configs, env


def run_tool(args, env, timeout=300):
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_kill_during_save_leaves_a_checkpoint_to_resume_from(toy_configs):
    configs, env = toy_configs
    work = osp.dirname(configs['BigToyRegressor']) + '/work'
    train = subprocess.Popen(
        [sys.executable, 'tools/train.py', str(configs['BigToyRegressor']), '--work-dir', work],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill as soon as the epoch-2 save has started writing its file.
    deadline = time.time() + 240
    writing = []
    while time.time() < deadline and train.poll() is None and not writing:
        writing = [
            name
            for name in (os.listdir(work) if osp.isdir(work) else [])
            if name.startswith('epoch_2.pth')
        ]
        time.sleep(0.002)
    train.send_signal(signal.SIGKILL)
    train.wait()
    assert writing, 'the run ended before its second save started'

    # What --resume will read names a complete checkpoint.
    with open(osp.join(work, 'last_checkpoint')) as f:
        named = f.read().strip()
    assert named.endswith(('epoch_1.pth', 'epoch_2.pth'))
    from mmengine.runner.checkpoint import _load_checkpoint

    import mmdsnet  # noqa: F401  (mmengine's loader with the Runner types)

    assert _load_checkpoint(named, map_location='cpu')['meta']['epoch'] in (1, 2)

    resumed = run_tool(
        ['tools/train.py', configs['BigToyRegressor'], '--work-dir', work, '--resume'], env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'Epoch(train) [3]' in resumed.stdout + resumed.stderr
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == ['epoch_3.pth']
    assert not [n for n in os.listdir(work) if n.endswith('.partial')]


@pytest.fixture
def trained_toy(toy_configs):
    configs, env = toy_configs
    work = osp.dirname(configs['ToyRegressor']) + '/toy_work'
    result = run_tool(['tools/train.py', configs['ToyRegressor'], '--work-dir', work], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return configs['ToyRegressor'], osp.join(work, 'epoch_3.pth'), env


def test_tools_test_refuses_a_checkpoint_that_does_not_fit(tmp_path, trained_toy):
    from mmengine.runner.checkpoint import _load_checkpoint

    import mmdsnet  # noqa: F401

    config, checkpoint, env = trained_toy
    full = _load_checkpoint(checkpoint, map_location='cpu')
    # A partial file (the head's bias missing) and a misshapen one.
    partial = dict(full, state_dict={'fc.weight': full['state_dict']['fc.weight']})
    misshapen = dict(full, state_dict=dict(full['state_dict'], **{'fc.bias': torch.zeros(3)}))
    diverged = dict(
        full, state_dict=dict(full['state_dict'], **{'fc.bias': torch.tensor([float('nan'), 0.0])})
    )
    cases = [
        ('partial', partial, '1 of 2 model weights are missing from it (e.g. fc.bias)'),
        ('misshapen', misshapen, 'fc.bias: checkpoint (3,) vs model (2,)'),
        ('diverged', diverged, "weight 'fc.bias' (2,) holds NaN values"),
    ]
    commands = []
    for name, content, _ in cases:
        path = tmp_path / f'{name}.pth'
        torch.save(content, path)
        commands.append(['tools/test.py', config, path, '--work-dir', tmp_path / name])
    commands.append(['tools/test.py', config, tmp_path / 'partial.pth', '--work-dir',
                     tmp_path / 'allowed', '--allow-partial-load'])  # fmt: skip
    commands.append(['tools/test.py', config, checkpoint, '--work-dir', tmp_path / 'ok'])
    *refused, allowed, complete = run_at_once(
        [[sys.executable, *map(str, c)] for c in commands], cwd=REPO_ROOT, env=env
    )
    for (name, _, message), result in zip(cases, refused):
        assert result.returncode != 0, name
        assert message in result.stderr, result.stderr[-2000:]
        assert 'Traceback' not in result.stderr
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert 'partial load allowed' in allowed.stdout + allowed.stderr
    assert complete.returncode == 0 and 'mse:' in complete.stdout + complete.stderr


def test_runner_types_are_allowed_in_mmengine_loading_only(tmp_path):
    """``import mmdsnet`` lets mmengine read Runner checkpoints (MessageHub with
    numpy values) with weights_only on; a plain torch.load stays as strict as
    torch makes it, and a truncated or empty path is explained."""
    script = f"""
import pickle, numpy as np, torch
from mmengine.logging import MessageHub
hub = MessageHub.get_instance('probe')
hub.update_scalar('loss', 1.0)
hub.update_info('eta', np.float64(3.0))
torch.save({{'state_dict': {{}}, 'message_hub': hub.state_dict()}}, {str(tmp_path / 'c.pth')!r})
import mmdsnet
from mmengine.runner.checkpoint import _load_checkpoint
print('mmengine:', type(_load_checkpoint({str(tmp_path / 'c.pth')!r})['message_hub']).__name__)
try:
    torch.load({str(tmp_path / 'c.pth')!r})
    print('torch.load: accepted')
except pickle.UnpicklingError:
    print('torch.load: refused')
for bad in ('', {str(tmp_path / 'cut.pth')!r}):
    try:
        _load_checkpoint(bad)
    except Exception as error:
        print(type(error).__name__, error)
"""
    with open(tmp_path / 'c.pth', 'wb'):
        pass
    (tmp_path / 'cut.pth').write_bytes(b'PK\x03\x04 not the whole file')
    result = run_tool(['-c', script], dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'mmengine: dict' in result.stdout
    assert 'torch.load: refused' in result.stdout
    assert 'last_checkpoint file is empty' in result.stdout
    assert 'cut.pth is incomplete or not a torch checkpoint' in result.stdout
