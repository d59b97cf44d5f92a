"""Fixtures every test folder shares: the registry scope models are built
under, and forgetting what an in-process Runner leaves behind. Plain helpers
(REPO_ROOT, load_tool, free_port) are in helpers.py.
"""

import importlib
import os

import pytest


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
def mmpretrain_scope():
    """Build with mmpretrain's registries (classification tests; mmpretrain is optional)."""
    yield from _default_scope('mmpretrain')


@pytest.fixture
def drop_runner_globals():
    """Forget the global instances an in-process Runner or inferencer leaves behind.

    A Runner makes its DefaultScope ('mmengine' for a plain Runner) the
    current one, an mmdet/mmseg inferencer its framework's, which would make
    later ``mmdet.registry.MODELS.build`` calls in other test files look in
    the wrong registry; its MessageHub, logger (with open log files) and
    visualizer are dropped as well.
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


def pytest_generate_tests(metafunc):
    """Parametrize ``config_path`` / ``det_config_path`` / ``seg_config_path``
    over the configs found when the tests are collected (helpers.CONFIG_KINDS),
    so a new config is tested without being listed anywhere."""
    from helpers import CONFIG_KINDS, REPO_ROOT, config_paths

    for name, patterns in CONFIG_KINDS.items():
        if name in metafunc.fixturenames:
            paths = config_paths(*patterns)
            ids = [os.path.relpath(p, os.path.join(REPO_ROOT, 'configs')) for p in paths]
            metafunc.parametrize(name, paths, ids=ids)


@pytest.fixture
def roi_align_dtypes(monkeypatch):
    """The (features, RoIs) dtypes of every call of mmcv's RoIAlign kernel,
    recorded on the way in (the kernel itself runs unchanged)."""
    roi_align_module = importlib.import_module('mmcv.ops.roi_align')
    kernel = roi_align_module.ext_module.roi_align_forward
    calls = []

    def recording(features, rois, *args, **kwargs):
        calls.append((features.dtype, rois.dtype))
        return kernel(features, rois, *args, **kwargs)

    monkeypatch.setattr(roi_align_module.ext_module, 'roi_align_forward', recording)
    return calls
