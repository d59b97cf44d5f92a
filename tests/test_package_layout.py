"""The package's floors: each folder of mmdsnet imports only from the folders
CONTRIBUTING.md allows it (the model knows nothing of its inspectors, its
trainers or its tests)."""

import ast
import glob
import os.path as osp

import pytest
from helpers import REPO_ROOT

PACKAGE = osp.join(REPO_ROOT, 'mmdsnet')
# Folder (or module) -> the mmdsnet folders and modules it may import.
ALLOWED = {
    'registry': set(),
    'version': set(),
    'utils': {'utils'},
    'checkpoint': {'checkpoint', 'utils'},
    'models': {'models', 'registry', 'utils', 'checkpoint'},
    'engine': {'engine', 'checkpoint', 'utils', 'registry'},
    'analysis': {'analysis', 'models', 'testing', 'utils'},
    'testing': {'testing', 'models', 'utils'},
    'demo': {'demo'},
    'cli': {'engine', 'utils', 'checkpoint', 'models', 'registry'},
}


def room_of(path):
    """'models' for mmdsnet/models/backbones/dsnet.py, 'cli' for mmdsnet/cli.py."""
    first = osp.relpath(path, PACKAGE).split(osp.sep)[0]
    return osp.splitext(first)[0]


def imported_rooms(path):
    """The mmdsnet rooms ``path`` imports, absolute or relative."""
    tree = ast.parse(open(path).read(), path)
    module_parts = osp.relpath(path, REPO_ROOT)[:-3].split(osp.sep)
    rooms = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module_parts[: len(module_parts) - node.level]
                base = '.'.join(package + ([node.module] if node.module else []))
                names = [base] if node.module else [f'{base}.{a.name}' for a in node.names]
            else:
                names = [node.module] if node.module else []
        else:
            continue
        for name in names:
            parts = name.split('.')
            if parts[0] == 'mmdsnet' and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


def package_files():
    return sorted(
        p
        for p in glob.glob(osp.join(PACKAGE, '**', '*.py'), recursive=True)
        if p != osp.join(PACKAGE, '__init__.py')
    )


def test_every_room_is_known():
    assert {room_of(p) for p in package_files()} <= set(ALLOWED)


@pytest.mark.parametrize('room', sorted(ALLOWED))
def test_room_imports_only_what_it_may(room):
    wrong = {}
    for path in package_files():
        if room_of(path) == room:
            extra = imported_rooms(path) - ALLOWED[room] - {room}
            if extra:
                wrong[osp.relpath(path, REPO_ROOT)] = sorted(extra)
    assert not wrong, f'{room} may import only {sorted(ALLOWED[room])}: {wrong}'


def test_no_tool_edits_its_import_path():
    """A script's own folder is on its path already, and tests load tools by path
    (helpers.load_tool): ``sys.path.insert`` in tools/ hides a wrong layout."""
    offenders = []
    for path in sorted(glob.glob(osp.join(REPO_ROOT, 'tools', '**', '*.py'), recursive=True)):
        with open(path) as f:
            text = f.read()
        if 'sys.path.insert' in text or 'sys.path.append' in text:
            offenders.append(osp.relpath(path, REPO_ROOT))
    assert offenders == []
