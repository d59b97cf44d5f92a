"""Configs carry only DS-Net's deltas: no DSNet or DSFPN entry sets an argument
to the constructor's default unless it overrides a different value of its base."""

import ast
import fnmatch
import inspect
import os.path as osp

import pytest
from helpers import CONFIG_KINDS, REPO_ROOT
from mmengine.config import Config

from mmdsnet.models import DSFPN, DSNet

CLASSES = {'DSNet': DSNet, 'DSFPN': DSFPN}


def own_source(path):
    """The config file's own assignments (ast), before any base is merged."""
    return ast.parse(open(path).read()).body


def local_base(path):
    """The config's own base inside this repo (a derived config), or None."""
    for node in own_source(path):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            bases = [value] if isinstance(value, str) else value
            local = [b for b in bases if b.startswith('.') and '_base_/' not in b]
            return osp.normpath(osp.join(osp.dirname(path), local[0])) if local else None
    return None


def written_keys(path, part):
    """Keyword names the file itself writes in ``model = dict(<part>=dict(...))``."""
    for node in own_source(path):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == 'model' for t in node.targets)
            and isinstance(node.value, ast.Call)
        ):
            for keyword in node.value.keywords:
                if keyword.arg == part and isinstance(keyword.value, ast.Call):
                    return {k.arg for k in keyword.value.keywords if k.arg}
    return set()


def ds_entries(cfg):
    """{part: entry} of the model's DSNet backbone and DSFPN neck."""
    model = cfg.model
    return {
        part: model[part]
        for part in ('backbone', 'neck')
        if isinstance(model.get(part), dict) and model[part].get('type') in CLASSES
    }


def defaults_of(cls):
    return {
        name: param.default
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if param.default is not inspect.Parameter.empty
    }


def shared_backbone():
    """The `dsnet_backbone` dict the root configs start from."""
    path = osp.join(REPO_ROOT, 'configs', '_base_', 'dsnet_backbone.py')
    return Config.fromfile(path)['dsnet_backbone']


def test_no_config_restates_a_default(config_path):
    if fnmatch.fnmatch(osp.basename(config_path), CONFIG_KINDS['cls_config_path'][0]):
        pytest.importorskip(
            'mmpretrain', reason="the ImageNet-1k configs inherit mmpretrain's (optional) bases"
        )
    entries = ds_entries(Config.fromfile(config_path))
    assert entries, 'every config builds a DSNet or a DSFPN'
    base_path = local_base(config_path)
    bases = ds_entries(Config.fromfile(base_path)) if base_path else {'backbone': shared_backbone()}
    restated = []
    for part, entry in entries.items():
        defaults = defaults_of(CLASSES[entry['type']])
        base = bases.get(part, {})
        if base.get('type') != entry['type']:
            base = {}  # another module before: its arguments are not DSNet's / DSFPN's
        for key in written_keys(config_path, part) & set(defaults):
            # A default is a delta only where the base set another value.
            if entry[key] == defaults[key] and base.get(key, defaults[key]) == entry[key]:
                restated.append(f'model.{part}.{key}={entry[key]!r}')
    assert not restated, f'{osp.basename(config_path)} restates defaults: {restated}'
