"""tools/gpu_check/check_imports.py: every module an import needs and the machine
lacks, named in one run, and nothing optional among them."""

import os.path as osp
import subprocess
import sys
import textwrap

from helpers import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'tools', 'gpu_check', 'check_imports.py')


def write_package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def check(root, *modules):
    return subprocess.run(
        [sys.executable, SCRIPT, *modules],
        capture_output=True,
        text=True,
        env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'},
        timeout=120,
    )


def test_every_missing_module_is_named_with_its_importer_and_optional_ones_are_not(tmp_path):
    write_package(
        tmp_path,
        {
            'stack/__init__.py': """
                from . import utils, tokenizer
                try:
                    import optional_accelerator  # optional: never reported
                except ImportError:
                    optional_accelerator = None
            """,
            # module-level use of what a missing module holds: attributes, calls, subclassing
            'stack/utils.py': """
                from absent_six.moves import map, zip
                import absent_progress as progress
                class Bar(progress.Bar):
                    pass
                DEFAULT = progress.make(width=3)
            """,
            'stack/tokenizer.py': 'import absent_regex as re\nPATTERN = re.compile("x")\n',
        },
    )
    result = check(tmp_path, 'json', 'stack')
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith('missing modules: absent_six, absent_progress, absent_regex (')
    assert 'the imports failed' not in result.stdout
    assert f'  absent_six: imported at {tmp_path / "stack" / "utils.py"}:2' in lines
    assert f'  absent_regex: imported at {tmp_path / "stack" / "tokenizer.py"}:1' in lines
    assert 'optional_accelerator' not in result.stdout


def test_a_module_that_imports_prints_ok(tmp_path):
    write_package(tmp_path, {'fine/__init__.py': 'import json\n'})
    result = check(tmp_path, 'fine')
    assert (result.returncode, result.stdout) == (0, 'ok\n')


def test_another_error_after_the_missing_modules_is_reported_after_them(tmp_path):
    """A missing submodule of an installed package is a broken install, not a missing
    package: it ends the search and is quoted as it is."""
    write_package(
        tmp_path,
        {
            'broken/__init__.py': 'import absent_yaml\nimport broken._ext\n',
            'broken/ops.py': '',
        },
    )
    result = check(tmp_path, 'broken')
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith('missing modules: absent_yaml (')
    assert (
        "; then the imports failed: broken: ModuleNotFoundError: No module named 'broken._ext'"
        in last
    )
