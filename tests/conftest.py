"""What several test files share: the repository root, a free TCP port for
multi-process runs, and the registry scope that models are built under.

Test modules import the plain names (``from conftest import REPO_ROOT``);
the fixtures are found by pytest.
"""

import importlib
import os.path as osp
import socket

import pytest

#: The checkout's root: configs/, tools/ and README.md live here.
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (MASTER_PORT of a launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _default_scope(name):
    """Register ``name``'s modules and make it the default scope meanwhile,
    as tools/train.py does for a config whose default_scope is ``name``."""
    from mmengine.registry import DefaultScope

    importlib.import_module(f'{name}.utils').register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(name):
        yield


@pytest.fixture
def mmdet_scope():
    """Build with mmdet's registries (``pytestmark = usefixtures('mmdet_scope')``)."""
    yield from _default_scope('mmdet')


@pytest.fixture
def mmseg_scope():
    """Build with mmseg's registries."""
    yield from _default_scope('mmseg')


@pytest.fixture
def drop_runner_globals():
    """Forget the global instances an in-process Runner leaves behind.

    A Runner makes its DefaultScope ('mmengine' for a plain Runner) the
    current one, which would make later ``mmdet.registry.MODELS.build``
    calls in other test files look in the wrong registry; its MessageHub,
    logger (with open log files) and visualizer are dropped as well.
    """
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer

    classes = (DefaultScope, MessageHub, MMLogger, Visualizer)
    before = {cls: set(cls._instance_dict) for cls in classes}
    yield
    for cls in classes:
        for name in set(cls._instance_dict) - before[cls]:
            instance = cls._instance_dict.pop(name)
            for handler in list(getattr(instance, 'handlers', [])):
                handler.close()
                instance.removeHandler(handler)
