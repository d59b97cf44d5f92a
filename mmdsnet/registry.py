"""Register mmdsnet modules in mmdet's, mmseg's and mmpretrain's ``MODELS``.

Each class is defined once and registered into every framework that is
importable, so ``type='DSNet'`` resolves under ``default_scope='mmdet'``,
``'mmseg'`` and ``'mmpretrain'`` alike. A missing framework is skipped (each
works without the others; mmpretrain is optional, for classification); if
none is installed, importing a model raises an ImportError that says what to
install.
"""

import importlib
from typing import List, Type

_FRAMEWORKS = ('mmdet', 'mmseg', 'mmpretrain')


def _available_model_registries() -> List:
    registries = []
    for name in _FRAMEWORKS:
        try:
            module = importlib.import_module(f'{name}.registry')
        except ImportError:
            continue
        registries.append(module.MODELS)
    if not registries:
        raise ImportError(
            'mmdsnet needs mmdet>=3.0, mmsegmentation>=1.0 or mmpretrain>=1.0 to '
            'register its models; install one of them (see README, "Install").'
        )
    return registries


def register_model(cls: Type) -> Type:
    """Class decorator: add ``cls`` to each available framework's MODELS."""
    for registry in _available_model_registries():
        registry.register_module(module=cls)
    return cls
