"""Plain helpers the test modules import (``from helpers import REPO_ROOT``):
the checkout's root, loading a tool script as a module, and a free TCP port."""

import glob
import importlib.util
import os.path as osp
import socket
import sys
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
}


def config_paths(*patterns: str) -> list:
    """The configs under configs/ matching ``patterns`` (glob, relative to
    configs/), shared bases left out, sorted."""
    root = osp.join(REPO_ROOT, 'configs')
    found = set()
    for pattern in patterns:
        found.update(glob.glob(osp.join(root, pattern), recursive=True))
    return sorted(p for p in found if '_base_' not in osp.relpath(p, root).split(osp.sep))
