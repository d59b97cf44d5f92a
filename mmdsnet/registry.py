"""Register mmdsnet modules in mmdet's and mmseg's ``MODELS``.

Each class is defined once and registered into every framework that is
importable, so ``type='DSNet'`` resolves under ``default_scope='mmdet'`` and
``default_scope='mmseg'`` alike. A missing framework is skipped (mmdet works
without mmseg and the reverse); if neither is installed, importing a model
raises an ImportError that says what to install.
"""

import importlib
from typing import List, Type

_FRAMEWORKS = ('mmdet', 'mmseg')


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
            'mmdsnet needs mmdet>=3.0 or mmsegmentation>=1.0 to register its '
            'models; install one of them (see README, "Install").'
        )
    return registries


def register_model(cls: Type) -> Type:
    """Class decorator: add ``cls`` to each available framework's MODELS."""
    for registry in _available_model_registries():
        registry.register_module(module=cls)
    return cls
