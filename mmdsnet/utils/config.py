"""Config files named by path or as ``package::relative/path.py``."""

import os.path as osp

from mmengine.config import Config


def resolve_config_path(name: str) -> str:
    """Path of a config given as a file or as mmengine's ``pkg::rel/path.py``.

    ``Config.fromfile`` accepts the ``pkg::`` form only inside ``_base_``;
    the tools accept it on the command line too (``mmdet::`` for mmdet's
    packaged configs, e.g. to measure the R-50 baselines).
    """
    if '::' not in name:
        if not osp.isfile(name):
            raise FileNotFoundError(f'config file not found: {name}')
        return name
    package, relative = name.split('::', 1)
    from mmengine.utils import get_installed_path, is_installed

    if not is_installed(package):
        raise FileNotFoundError(
            f'config {name}: package {package!r} is not installed (packaged configs '
            'come from mmdet, mmseg and other OpenMMLab packages)'
        )
    root = osp.join(get_installed_path(package), '.mim', 'configs')
    path = osp.join(root, relative)
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {name}: no {relative} under {root}')
    return path


def load_config_file(name: str) -> Config:
    """``Config.fromfile`` that also takes ``pkg::rel/path.py`` (see
    :func:`resolve_config_path`)."""
    return Config.fromfile(resolve_config_path(name))
