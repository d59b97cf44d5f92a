"""Plain helpers the test modules import (``from helpers import REPO_ROOT``):
the checkout's root, loading a tool script as a module, a free TCP port,
public DS-Net weights as PaddleClas stores them, a run of the converter, and
independent commands run at the same time."""

import glob
import importlib.util
import os.path as osp
import socket
import subprocess
import sys
import tempfile
import time
from types import ModuleType

#: The checkout's root: configs/, tools/ and README.md live here.
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(relative_path: str) -> ModuleType:
    """Import a script under tools/ (e.g. ``'tools/train.py'``) as a module.

    Each call executes the file afresh under a name of its own, so a test
    can patch the returned module without affecting another test; the
    newest copy is in ``sys.modules`` under that name (dataclasses need it).
    """
    path = osp.join(REPO_ROOT, relative_path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'no tool at {relative_path} (relative to {REPO_ROOT})')
    name = 'tool_' + relative_path[:-3].replace('/', '_').replace('-', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (MASTER_PORT of a launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


#: tests/: toy_task.py and this module live here (PYTHONPATH of child processes).
TESTS_ROOT = osp.dirname(osp.abspath(__file__))


#: Which configs a test is parametrized over, by argument name (see conftest.py).
CONFIG_KINDS = {
    'config_path': ('**/*.py',),
    'det_config_path': ('*_coco.py', 'demo/mask_rcnn_*.py'),
    'seg_config_path': ('*_ade20k-512x512.py', 'demo/*-seg.py'),
    'dsfpn_config_path': ('**/*dsfpn*.py',),
    'cls_config_path': ('*_in1k.py',),
}


def config_paths(*patterns: str) -> list:
    """The configs under configs/ matching ``patterns`` (glob, relative to
    configs/), shared bases left out, sorted."""
    root = osp.join(REPO_ROOT, 'configs')
    found = set()
    for pattern in patterns:
        found.update(glob.glob(osp.join(root, pattern), recursive=True))
    return sorted(p for p in found if '_base_' not in osp.relpath(p, root).split(osp.sep))


def to_paddle(public: dict) -> dict:
    """What a PaddleClas ``DSNet_*_pretrained.pdparams`` holds for these public
    (timm-layout) weights: numpy arrays, BN buffers ``_mean``/``_variance``
    without ``num_batches_tracked``, Linear weights (in, out), and Paddle's
    name table."""
    import numpy as np

    from mmdsnet.checkpoint import LINEAR_LAYERS

    out = {}
    for key, value in public.items():
        layer, _, param = key.rpartition('.')
        array = value.numpy()
        if param == 'num_batches_tracked':
            continue
        if param == 'running_mean':
            out[f'{layer}._mean'] = array
        elif param == 'running_var':
            out[f'{layer}._variance'] = array
        elif param == 'weight' and layer.rpartition('.')[2] in LINEAR_LAYERS:
            out[key] = np.ascontiguousarray(array.T)
        else:
            out[key] = array
    out['StructuredToParameterName@@'] = {k: f'param_{i}' for i, k in enumerate(out)}
    return out


def converter_command(*args) -> list:
    """``tools/model_converters/dsnet2mmdet.py ARGS`` as a command line."""
    script = osp.join(REPO_ROOT, 'tools/model_converters/dsnet2mmdet.py')
    return [sys.executable, script, *map(str, args)]


def run_converter(*args) -> subprocess.CompletedProcess:
    """The converter with ``args`` in a child process (output captured)."""
    return subprocess.run(converter_command(*args), capture_output=True, text=True, timeout=120)


class Started:
    """A command started in the background, its output going to temporary files
    (a talkative command does not wait on a full pipe); ``result()`` waits for it."""

    def __init__(self, command: list, **popen_args):
        self.command = command
        self.out = tempfile.TemporaryFile('w+')
        self.err = tempfile.TemporaryFile('w+')
        self.process = subprocess.Popen(
            command, stdout=self.out, stderr=self.err, text=True, **popen_args
        )

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Its CompletedProcess (output as text); past ``timeout`` seconds it is
        killed and TimeoutExpired raised."""
        try:
            self.process.wait(timeout=timeout)
        finally:
            self.kill()
        self.out.seek(0), self.err.seek(0)
        result = subprocess.CompletedProcess(
            self.command, self.process.returncode, self.out.read(), self.err.read()
        )
        self.out.close(), self.err.close()
        return result

    def kill(self) -> None:
        """Stop it if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_at_once(commands: list, timeout: float = 300, **popen_args) -> list:
    """Run independent commands at the same time; their CompletedProcess results,
    in order. The suite's child processes spend most of their time importing, on
    one core: side by side they use both of a two-core machine. Past ``timeout``
    seconds those still running are killed and TimeoutExpired is raised."""
    deadline = time.monotonic() + timeout
    started = [Started(command, **popen_args) for command in commands]
    try:
        return [s.result(max(deadline - time.monotonic(), 0)) for s in started]
    finally:
        for s in started:
            s.kill()
