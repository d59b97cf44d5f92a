"""Import modules and name every module they need that this machine lacks, in one run.

    python tools/gpu_check/check_imports.py mmdet.models mmseg.models mmdsnet

Prints ``ok`` and exits 0 when every module imports. Otherwise an offline
machine would learn its missing packages one rerun at a time (``six``, then
``tqdm``, then ``regex``...), so a missing top-level module is noted and the
import is tried again in a fresh interpreter with a stand-in for each module
noted so far, until the imports get through or fail for another reason. It
then prints one line per missing module with the file that imports it, a last
line that names them all (and the other failure, if any), and exits 1. Modules
that a package imports inside ``try`` (optional ones) never reach it: only a
``ModuleNotFoundError`` that stops the import is counted.

Standard library only, like the rest of tools/gpu_check/.
"""

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import traceback
import types

# The missing modules to stand in for, as JSON, in the interpreter that tries the imports.
STAND_INS = 'MMDSNET_CHECK_IMPORTS_STAND_INS'
# The most reruns: each finds one more missing module.
MAX_TRIES = 20


class Anything:
    """What a stand-in module holds: it can be called, subclassed, iterated and
    asked for any attribute, so that module-level code using it gets through."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Anything()

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return Anything()

    def __iter__(self):
        return iter(())

    def __mro_entries__(self, bases):
        return (Anything,)


class StandIn(types.ModuleType):
    """A missing module: any attribute is an ``Anything``."""

    __getattr__ = Anything.__getattr__


class StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: answers only for the noted missing modules and their submodules."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split('.')[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def try_imports(modules):
    """In this interpreter: import ``modules``; print one JSON line with the outcome."""
    stand_ins = json.loads(os.environ.get(STAND_INS, '[]'))
    sys.meta_path.append(StandInFinder(stand_ins))
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            top = (error.name or '').split('.')[0]
            missing = bool(top) and top not in stand_ins and not installed(top)
            print(json.dumps(dict(module=module, missing=top if missing else None,
                                  error=last_line(error), where=importer(error))))  # fmt: skip
            return
        except Exception as error:  # noqa: BLE001 - any failure is the answer
            print(json.dumps(dict(module=module, missing=None, error=last_line(error),
                                  where=importer(error))))  # fmt: skip
            return
    print(json.dumps(dict(module=None, missing=None, error=None, where=None)))


def installed(top):
    """Whether a top-level module is findable apart from the stand-ins."""
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def last_line(error):
    return ''.join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]


def importer(error):
    """The file of the last frame outside the import machinery and this script: who asked
    for the module."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if 'importlib' not in frame.filename and frame.filename != __file__
    ]
    return f'{frames[-1].filename}:{frames[-1].lineno}' if frames else 'the command line'


def check(modules, python=sys.executable):
    """Try the imports again and again, a stand-in more each time; return (missing, error):
    the missing modules as (name, importing file), and the error that ended the tries
    (None when the imports got through)."""
    missing, stand_ins = [], []
    for _ in range(MAX_TRIES):
        env = dict(os.environ, **{STAND_INS: json.dumps(stand_ins)})
        process = subprocess.run(
            [python, os.path.abspath(__file__), '--one-try', *modules],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        lines = [ln for ln in process.stdout.splitlines() if ln.startswith('{')]
        if process.returncode != 0 or not lines:
            tail = (process.stderr.strip().splitlines() or ['no output'])[-1]
            code = process.returncode
            return missing, f'the import crashed the interpreter (exit {code}): {tail}'
        outcome = json.loads(lines[-1])
        if outcome['missing']:
            missing.append((outcome['missing'], outcome['where']))
            stand_ins.append(outcome['missing'])
            continue
        if outcome['error']:
            return missing, f'{outcome["module"]}: {outcome["error"]} (at {outcome["where"]})'
        return missing, None
    return missing, f'more than {MAX_TRIES} missing modules; stopped looking'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('modules', nargs='+', help='modules to import, in order')
    parser.add_argument('--one-try', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_try:
        try_imports(args.modules)
        return 0
    missing, error = check(args.modules)
    if not missing and not error:
        print('ok')
        return 0
    # The details first, the summary last: gpu_check.py quotes a failed command's last line.
    for name, where in missing:
        print(f'  {name}: imported at {where}')
    parts = []
    if missing:
        names = ', '.join(name for name, _ in missing)
        parts.append(f'missing modules: {names} (put their wheels into the wheels folder; a '
                     'module name may differ from its package name: yaml is PyYAML)')  # fmt: skip
    if error:
        parts.append(f'{"then " if missing else ""}the imports failed: {error}')
    print('; '.join(parts))
    return 1


if __name__ == '__main__':
    raise SystemExit(main())
