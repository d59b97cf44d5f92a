"""`import mmdsnet` (or custom_imports) registers the models in mmdet and mmseg."""

import subprocess
import sys
import textwrap

import pytest

# Every test here starts processes or trains.
pytestmark = pytest.mark.integration


def run_python(code, cwd):
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result


def test_both_registries_build_from_config_file_in_fresh_process(tmp_path):
    (tmp_path / 'dsnet_cfg.py').write_text(
        textwrap.dedent("""
        custom_imports = dict(imports=['mmdsnet'], allow_failed_imports=False)
        model = dict(type='DSNet', arch='small')
    """)
    )
    result = run_python(
        """
        import sys
        from mmengine.config import Config
        cfg = Config.fromfile('dsnet_cfg.py')
        assert 'mmdsnet' in sys.modules  # imported by custom_imports, not by us
        from mmdet.registry import MODELS as DET
        from mmseg.registry import MODELS as SEG
        det, seg = DET.build(cfg.model), SEG.build(cfg.model)
        assert type(det) is type(seg), (type(det), type(seg))
        print(type(det).__module__, type(det).__name__,
              sum(p.numel() for p in det.parameters()))
    """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert 'mmdsnet.models.backbones.dsnet DSNet 22490528' in result.stdout


@pytest.mark.parametrize('blocked,present', [('mmseg', 'mmdet'), ('mmdet', 'mmseg')])
def test_one_framework_missing_does_not_break_the_other(tmp_path, blocked, present):
    result = run_python(
        f"""
        import sys
        sys.modules['{blocked}'] = None  # makes `import {blocked}` raise ImportError
        sys.modules['mmpretrain'] = None  # optional: absent in both cases
        import mmdsnet
        from {present}.registry import MODELS
        model = MODELS.build(dict(type='DSNet', arch='tiny'))
        print('built', type(model).__name__)
    """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert 'built DSNet' in result.stdout


def test_no_framework_gives_clear_error(tmp_path):
    result = run_python(
        """
        import sys
        sys.modules['mmdet'] = None
        sys.modules['mmseg'] = None
        sys.modules['mmpretrain'] = None
        import mmdsnet
    """,
        tmp_path,
    )
    assert result.returncode != 0
    assert 'mmdsnet needs mmdet>=3.0, mmsegmentation>=1.0 or mmpretrain>=1.0' in result.stderr
