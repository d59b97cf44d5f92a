"""`import mmdsnet` (or custom_imports) registers the models in mmdet and mmseg.

Each case runs in a fresh interpreter; the module's cases start side by side
(``run_at_once``) and each test checks its own."""

import sys
import textwrap

import pytest
from helpers import run_at_once

# Every test here starts processes or trains.
pytestmark = pytest.mark.integration

CONFIG = """
custom_imports = dict(imports=['mmdsnet'], allow_failed_imports=False)
model = dict(type='DSNet', arch='small')
"""

BOTH_FROM_CONFIG = """
import sys
from mmengine.config import Config
cfg = Config.fromfile('dsnet_cfg.py')
assert 'mmdsnet' in sys.modules  # imported by custom_imports, not by us
from mmdet.registry import MODELS as DET
from mmseg.registry import MODELS as SEG
det, seg = DET.build(cfg.model), SEG.build(cfg.model)
assert type(det) is type(seg), (type(det), type(seg))
print(type(det).__module__, type(det).__name__, sum(p.numel() for p in det.parameters()))
"""

ONE_MISSING = """
import sys
sys.modules['{blocked}'] = None  # makes `import {blocked}` raise ImportError
sys.modules['mmpretrain'] = None  # optional: absent in both cases
import mmdsnet
from {present}.registry import MODELS
model = MODELS.build(dict(type='DSNet', arch='tiny'))
print('built', type(model).__name__)
"""

NONE_PRESENT = """
import sys
sys.modules['mmdet'] = None
sys.modules['mmseg'] = None
sys.modules['mmpretrain'] = None
import mmdsnet
"""

SCRIPTS = {
    'both from config': BOTH_FROM_CONFIG,
    'no mmseg': ONE_MISSING.format(blocked='mmseg', present='mmdet'),
    'no mmdet': ONE_MISSING.format(blocked='mmdet', present='mmseg'),
    'none': NONE_PRESENT,
}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The result of each script of SCRIPTS, by name."""
    folder = tmp_path_factory.mktemp('registry')
    (folder / 'dsnet_cfg.py').write_text(CONFIG)
    commands = [[sys.executable, '-c', textwrap.dedent(code)] for code in SCRIPTS.values()]
    return dict(zip(SCRIPTS, run_at_once(commands, cwd=folder)))


def test_both_registries_build_from_config_file_in_fresh_process(runs):
    result = runs['both from config']
    assert result.returncode == 0, result.stderr
    assert 'mmdsnet.models.backbones.dsnet DSNet 22490528' in result.stdout


@pytest.mark.parametrize('case', ['no mmseg', 'no mmdet'])
def test_one_framework_missing_does_not_break_the_other(runs, case):
    result = runs[case]
    assert result.returncode == 0, result.stderr
    assert 'built DSNet' in result.stdout


def test_no_framework_gives_clear_error(runs):
    result = runs['none']
    assert result.returncode != 0
    assert 'mmdsnet needs mmdet>=3.0, mmsegmentation>=1.0 or mmpretrain>=1.0' in result.stderr
