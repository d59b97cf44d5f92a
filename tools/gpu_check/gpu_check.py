"""Check and measure a GPU machine in one command: `make gpu-check`.

    python tools/gpu_check/gpu_check.py --out OUT [--wheels DIR] [--mmcv-wheel FILE]
        [--cpu] [--steps install,env,tests,demo,...,demo_bf16] [--budget S]

Runs each step in its own process with a time limit and writes everything
into OUT: ``env.json`` (GPU, driver, torch, CUDA, cuDNN, NCCL), ``steps.json``
(status, exit code and seconds of every step), ``logs/<step>.log``,
``results/*.json`` (every figure), ``profile_*.txt`` (torch.profiler tables)
and ``summary.md`` (the tables as they go into the README and
docs/performance.md, and the targets checked; summary.py). A failed or
timed-out step is recorded and the next one runs. OUT is gpu-check's own: a
marker file says so, and only a folder carrying it is cleared for a new run.

Steps (their order, settings and time limits are in settings.py):
  install    skipped when mmcv (with ops), mmdet, mmseg and mmengine import and,
             on a GPU, mmcv's CUDA ops agree with its CPU kernels. Otherwise
             the wheels of ``--wheels`` (no package index needed), but mmcv's,
             go into ``work_dirs/gpu-check/site`` (``pip --target --no-deps``);
             mmcv from ``--mmcv-wheel`` when given, else built from the
             ``mmcv-2.1.0.tar.gz`` in ``--wheels`` by
             ``tools/install/install_env.sh mmcv`` (patched, with CUDA ops for
             this GPU); then its ops are checked against the CPU kernels, which
             is where a wheel that does not fit this Python, torch or GPU stops.
             Later steps put the site folder and the repository on PYTHONPATH:
             the preinstalled torch is used as it is.
  env        versions of the machine and the stack as installed (describe_env.py).
  tests      the ``gpu`` tests (tests/gpu/test_gpu.py); skipped with their reason
             without CUDA. With the demo step in the run, the one-process
             ``dist_train.sh`` test is left to the demo, which runs the same
             path to the end.
  demo       ``tools/demo/demo.sh det``: the demo detector trained with
             tools/dist_train.sh (one process per GPU, NCCL, ``--amp``), then
             tools/test.py; its figures come from the ``demo_summary.json`` of
             tools/demo/demo_summary.py, whose learning check (bbox mAP >= 0.3)
             is the step's target. DDP's "Grad strides do not match" warnings
             in the training log are counted.
  attention, benchmark, profile
             the measurement scripts of tools/analysis_tools/ listed in
             settings.py: SDPA backends and attention kernels, backbone and
             Mask R-CNN speed and memory, torch.profiler tables.
  demo_bf16  the demo again with bf16 AMP (``--amp --cfg-options
             optim_wrapper.dtype=bfloat16``); last, as the step a cut budget
             loses first.

``--cpu`` (or a machine without CUDA) runs the same steps and writes the same
files with tiny settings on the CPU, in a few minutes, but for the steps of
settings.CPU_LEAVES_OUT (``demo_bf16``: without a GPU it would repeat the demo's
fp32 run), which it records as ``gpu only`` with the reason. The tests run it so that
this script cannot rot. Standard library only: it must run before anything is
installed.
"""

import argparse
import glob
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from settings import CPU, CPU_LEAVES_OUT, GPU, IMPORTS, LIMITS, STEPS
from summary import write_summary

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HERE = osp.dirname(osp.abspath(__file__))
MMCV_VERSION = '2.1.0'
GRAD_STRIDE_WARNING = 'Grad strides do not match bucket view strides'
# tools/demo/demo_summary.py's exit code for a run that ended but showed no learning: the demo
# step passed, its target (the learning check) missed.
DEMO_NO_LEARNING = 3
# Set in every step's processes, so those left by a stopped step can be found
# (torchrun's workers run in sessions of their own).
STEP_MARKER = 'MMDSNET_GPU_CHECK_STEP'
# The status of a step the CPU mode leaves out (settings.CPU_LEAVES_OUT): not a failure.
GPU_ONLY = 'gpu only'
# Written into OUT on its first use: only a folder carrying it is cleared for a new run.
OUT_MARKER = '.gpu-check-out'


def prepare_out(out):
    """Make OUT gpu-check's folder, empty: a new or empty folder gets the marker, one that
    carries it is cleared of the earlier run; any other folder with files is refused."""
    marker = osp.join(out, OUT_MARKER)
    if osp.isdir(out) and os.listdir(out) and not osp.isfile(marker):
        raise ValueError(
            f'--out {out} holds files and is not a gpu-check output folder (no {OUT_MARKER} '
            'marker); give a new or empty folder, or one an earlier gpu-check run wrote'
        )
    os.makedirs(out, exist_ok=True)
    for entry in os.listdir(out):
        path = osp.join(out, entry)
        if entry == OUT_MARKER:
            continue
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    with open(marker, 'w') as f:
        f.write('written by tools/gpu_check/gpu_check.py: cleared at the start of each run\n')
    for folder in ('logs', 'results'):
        os.makedirs(osp.join(out, folder))


class Check:
    """Runs the steps, keeps their records and writes OUT."""

    def __init__(
        self, out, python, cpu, wheels=None, mmcv_wheel=None, budget=None, tests_k=None,
        steps=STEPS,
    ):  # fmt: skip
        self.out = osp.abspath(out)
        self.python, self.cpu, self.steps, self.tests_k = python, cpu, steps, tests_k
        self.wheels, self.mmcv_wheel = wheels, mmcv_wheel
        self.deadline = None if budget is None else time.monotonic() + budget
        self.settings = CPU if cpu else GPU
        self.site = osp.join(ROOT, 'work_dirs', 'gpu-check', 'site')
        self.records = []
        prepare_out(self.out)

    # -- running -------------------------------------------------------------
    def env(self, **extra):
        """Environment of every step: the site folder (when made) and the repo first."""
        env = dict(os.environ, PYTHON=self.python, PYTHONUNBUFFERED='1', **extra)
        paths = ([self.site] if osp.isdir(self.site) else []) + [ROOT]
        env['PYTHONPATH'] = os.pathsep.join(paths + [p for p in [env.get('PYTHONPATH')] if p])
        if self.cpu:
            env['CUDA_VISIBLE_DEVICES'] = ''
        return env

    def run(self, step, commands, limit, keep_going=False, ok_codes=(0,), env=None):
        """Run shell-free commands in turn into logs/<step>.log; record the step.

        The step gets ``limit`` seconds, or what is left of the whole run's
        budget if that is less (a step with under 10 s left is skipped). A
        command past the limit is stopped with all its processes
        (``stop_processes``), so the next step has the GPU to itself.
        """
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left < 10:
                self.record(step, 'skipped', 0.0, note='the run budget was spent')
                return False
            limit = min(limit, left)
        start = time.monotonic()
        status, code, failure = 'passed', 0, {}
        path = osp.join(self.out, 'logs', f'{step}.log')
        with open(path, 'w') as log:
            for index, command in enumerate(commands):
                left = limit - (time.monotonic() - start)
                log.write(f'$ {" ".join(command)}\n')
                log.flush()
                begins = log.tell()
                if left <= 0:
                    status, code = 'timeout', None
                    failure = failure or dict(failed_command=index)
                    break
                marker = f'{step}-{os.getpid()}-{time.monotonic_ns()}'
                process = subprocess.Popen(
                    command, cwd=ROOT, env=self.env(**(env or {}), **{STEP_MARKER: marker}),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
                try:
                    code = process.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    stop_processes(process, marker)
                    status, code = 'timeout', None
                    failure = failure or dict(failed_command=index)
                    log.write(f'\n[gpu-check] {step}: stopped after {limit:.0f} s\n')
                    break
                if code not in ok_codes:
                    status = 'failed'
                    if not failure:  # the first failure is the one to read
                        failure = dict(failed_command=index, error=last_output_line(path, begins))
                    if not keep_going:
                        break
        seconds = round(time.monotonic() - start, 1)
        self.record(step, status, seconds, exit_code=code, log=f'logs/{step}.log', **failure)
        return status == 'passed'

    def record(self, step, status, seconds, **extra):
        self.records.append(dict(step=step, status=status, seconds=seconds, **extra))
        print(f'[gpu-check] {step}: {status} in {seconds:.0f} s', flush=True)
        self.write_json('steps.json', self.records)

    def update(self, **fields):
        """Add fields to the last step's record."""
        self.records[-1].update(fields)
        self.write_json('steps.json', self.records)

    def write_json(self, name, data):
        with open(osp.join(self.out, name), 'w') as f:
            json.dump(data, f, indent=1)

    def py(self, *args):
        return [self.python, *args]

    def verify_ops(self):
        """cuda_build_env.py's check of mmcv's ops against the CPU kernels (on the GPU)."""
        return self.py('tools/install/cuda_build_env.py', '--verify-ops',
                       'cpu' if self.cpu else 'cuda', '--expect-mmcv', MMCV_VERSION)  # fmt: skip

    def check_imports(self):
        """check_imports.py on the modules the later steps import: every missing one at once."""
        return self.py(osp.join(HERE, 'check_imports.py'), *IMPORTS)

    # -- steps ---------------------------------------------------------------
    def step_install(self):
        if not self.wheels:
            # the two checks side by side: each spends its time importing the stack
            start = time.monotonic()
            checks = [subprocess.Popen(c, cwd=ROOT, env=self.env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
                      for c in (self.verify_ops(), self.check_imports())]  # fmt: skip
            outputs = [check.communicate()[0] for check in checks]
            seconds = round(time.monotonic() - start, 1)
            with open(osp.join(self.out, 'logs', 'install.log'), 'w') as log:
                log.write(''.join(outputs))
            failed = [out for check, out in zip(checks, outputs) if check.returncode != 0]
            if not failed:
                self.record('install', 'passed', seconds, note='already installed')
            else:
                output = failed[0].strip().splitlines() or ['']
                self.record('install', 'failed', seconds, note=f'the OpenMMLab stack does not '
                            f'work here ({output[-1][:300]}) and no --wheels folder was given '
                            '(make gpu-check WHEELS=folder [MMCV_WHEEL=file])')  # fmt: skip
            return
        wheels = sorted(glob.glob(osp.join(self.wheels, '*.whl')))
        setuptools = [w for w in wheels if osp.basename(w).startswith('setuptools-')]
        others = [w for w in wheels if not osp.basename(w).startswith(('setuptools-', 'mmcv-'))]
        pip = self.py('-m', 'pip', 'install', '--no-index', '--no-deps', '--upgrade',
                      '--disable-pip-version-check', '--target', self.site)  # fmt: skip
        os.makedirs(self.site, exist_ok=True)
        if self.mmcv_wheel:
            mmcv, limit, env = [pip + [self.mmcv_wheel]], LIMITS['install'], {}
        else:  # the sdist in WHEELS, patched and built by the installer into the site folder
            mmcv = [['bash', 'tools/install/install_env.sh', 'mmcv']]
            limit = LIMITS['install_build']
            env = dict(PIP_NO_INDEX='1', PIP_FIND_LINKS=osp.abspath(self.wheels),
                       PIP_TARGET=self.site, PIP_UPGRADE='1')  # fmt: skip
        # The imports before mmcv's ops are checked (which needs mmengine's dependencies): a
        # machine without packages the wheels lack is told all of them at once.
        commands = [pip + setuptools, pip + others, *mmcv, self.check_imports(), self.verify_ops()]
        ok = self.run('install', commands, limit, env=env)
        self.update(mmcv=self.mmcv_wheel or 'built from source by install_env.sh mmcv')
        if not ok:
            self.update(note=install_failure(self.records[-1], commands, self.mmcv_wheel))

    def step_env(self):
        command = self.py(osp.join(HERE, 'describe_env.py'), osp.join(self.out, 'env.json'))
        self.run('env', [command], LIMITS['env'])

    def step_tests(self):
        """The gpu tests in two runs, the training one last: a run stopped at the
        step's limit keeps the report of the first. The training one only
        without the demo step (which runs dist_train.sh to the end)."""
        parts = [('fast', 'not dist_train')]
        if 'demo' not in self.steps or self.tests_k:
            parts.append(('train', 'dist_train'))
        commands, reports = [], []
        for part, select in parts:
            if self.tests_k:
                select = f'({select}) and ({self.tests_k})'
            reports.append(osp.join(self.out, 'results', f'gpu_tests_{part}.xml'))
            commands.append(
                self.py('-m', 'pytest', 'tests/gpu/test_gpu.py', '-m', 'gpu', '-k', select, '-rs',
                        '-v', '--tb=short', '-p', 'no:cacheprovider', f'--junitxml={reports[-1]}')
            )  # fmt: skip
        # pytest's 5: a --tests-k that leaves one of the two runs nothing to run
        self.run('tests', commands, LIMITS['tests'], keep_going=True, ok_codes=(0, 5))
        if len(parts) == 1:
            note = 'test_dist_train_nccl_amp_two_epochs: left to the demo step'
            old = self.records[-1].get('note')
            self.update(note=f'{old}; {note}' if old else note)
        reports = [r for r in reports if osp.isfile(r)]
        if reports:
            self.update(tests=junit_counts(reports))

    def step_demo(self, step='demo'):
        """demo.sh with the AMP dtype of settings.py's ``step`` entry, in its own work dir;
        its figures into results/<step>.json."""
        demo = self.settings[step]
        work_dir = osp.join(ROOT, 'work_dirs', 'gpu-check', step)
        shutil.rmtree(work_dir, ignore_errors=True)  # demo.sh wants a fresh WORK_DIR
        # float16 is --amp's own (the mission's command as users type it); another dtype is set
        dtype = (
            [f'optim_wrapper.dtype={demo["amp"]}'] if demo['amp'] not in (None, 'float16') else []
        )
        options = dtype + demo['options']
        args = (['--amp'] if demo['amp'] else []) + (['--cfg-options', *options] if options else [])
        env = dict(WORK_DIR=work_dir, **({'NPROC': str(demo['nproc'])} if demo['nproc'] else {}))
        command = ['bash', 'tools/demo/demo.sh', 'det', *args]
        self.run(step, [command], LIMITS[step], ok_codes=(0, DEMO_NO_LEARNING), env=env)
        record = dict(self.records[-1], amp=demo['amp'])
        summary = load_json(osp.join(work_dir, 'demo_summary.json'))
        if summary is not None:
            record.update(processes=summary['processes'], train_seconds=summary['train_seconds'],
                          total_seconds=summary['total_seconds'],
                          **{k.split('/')[-1]: v for k, v in summary['test'].items()})  # fmt: skip
            if not self.cpu:  # the tiny CPU run is not meant to learn
                check = summary['check']
                value = 'n/a' if check['value'] is None else f'{check["value"]:.3f}'
                record['target'] = (
                    f'{check["metric"]} {value} (needs >= {check["threshold"]}), '
                    f'loss falls: {check["loss_falls"]}: {"met" if check["passed"] else "missed"}'
                )
        console = osp.join(work_dir, 'train_console.log')
        if osp.isfile(console):  # not when the budget left the step out
            with open(console, errors='replace') as log:
                record['grad_stride_warnings'] = log.read().count(GRAD_STRIDE_WARNING)
        self.update(**record)
        self.write_json(osp.join('results', f'{step}.json'), record)

    def step_demo_bf16(self):
        self.step_demo('demo_bf16')

    def measure(self, step):
        """A measurement step: each script of settings.py with its arguments and its output."""
        commands = [
            self.py(f'tools/analysis_tools/{script}', *args, '--out', osp.join(self.out, output))
            for script, output, args in self.settings[step]
        ]
        self.run(step, commands, LIMITS[step], keep_going=True)


def load_json(path):
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def stop_processes(process, marker, grace=20.0):
    """Stop a command past its limit and every process it started.

    SIGTERM to its process group first (torchrun then stops its workers),
    SIGKILL after ``grace`` seconds; then SIGKILL to any process still
    carrying the step's ``marker`` in its environment, e.g. a worker in a
    session of its own.
    """
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    needle = f'{STEP_MARKER}={marker}'.encode()
    for pid in marked_processes(needle):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def marked_processes(needle):
    """Pids whose environment holds ``needle`` (Linux /proc; none elsewhere)."""
    pids = []
    for entry in glob.glob('/proc/[0-9]*/environ'):
        try:
            with open(entry, 'rb') as f:
                if needle in f.read().split(b'\0'):
                    pids.append(int(entry.split('/')[2]))
        except OSError:
            continue
    return pids


def install_failure(record, commands, mmcv_wheel):
    """What the install step's failed command means, for its note."""
    failed, error = record.get('failed_command'), record.get('error', '')
    if failed is None:
        return 'see logs/install.log'
    if record['status'] == 'timeout':
        return f'{" ".join(commands[failed][:3])} ran out of time'
    if failed < 2:
        return f'the wheels of WHEELS do not install: {error}'
    if osp.basename(commands[failed][1]) == 'check_imports.py':  # its last line names them all
        return f'the stack does not import on this machine: {error}; see logs/install.log'
    if mmcv_wheel:
        return (
            f'{osp.basename(mmcv_wheel)} does not install, or its ops do not work, with this '
            f'Python, torch and GPU ({error}); without MMCV_WHEEL, mmcv is built from '
            'WHEELS/mmcv-2.1.0.tar.gz'
        )
    return f'mmcv does not build or its ops do not work: {error}'


def last_output_line(path, offset, width=300):
    """The last non-blank line a command wrote to its log from ``offset`` on: usually the
    error that stopped it."""
    with open(path, errors='replace') as log:
        log.seek(offset)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
    return lines[-1][:width] if lines else 'no output'


def junit_counts(paths):
    """passed/failed/skipped counts and the cases (with skip reasons) of pytest junit files."""
    counts = dict(passed=0, failed=0, skipped=0, cases=[])
    for case in (c for path in paths for c in ET.parse(path).getroot().iter('testcase')):
        skipped = case.find('skipped')
        if skipped is not None:
            outcome, reason = 'skipped', skipped.get('message', '')
        elif case.find('failure') is not None or case.find('error') is not None:
            outcome, reason = 'failed', ''
        else:
            outcome, reason = 'passed', ''
        counts[outcome] += 1
        counts['cases'].append(dict(name=case.get('name'), outcome=outcome,
                                    seconds=float(case.get('time', 0)), reason=reason))  # fmt: skip
    return counts


def has_cuda(python):
    """Whether torch sees a GPU (asked in a child: torch may not import here yet)."""
    probe = subprocess.run(
        [python, '-c', 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'],
        capture_output=True,
    )
    return probe.returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/gpu-check/out')
    parser.add_argument('--wheels', help='folder of wheels to install from (no index needed)')
    parser.add_argument('--mmcv-wheel', help='prebuilt mmcv 2.1.0 wheel with CUDA ops')
    parser.add_argument('--cpu', action='store_true', help='tiny settings on the CPU')
    parser.add_argument('--steps', default=','.join(STEPS))
    parser.add_argument('--tests-k', help='only the gpu tests matching this pytest -k expression')
    parser.add_argument(
        '--budget',
        type=float,
        help='seconds for the whole run: each step gets at most what is left '
        '(a machine lent for a fixed time keeps the time to bring the results back)',
    )
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(',') if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f'unknown steps {unknown}; choose from {", ".join(STEPS)}')
    for name, path in (('--wheels', args.wheels), ('--mmcv-wheel', args.mmcv_wheel)):
        if path and not osp.exists(path):
            parser.error(f'{name} {path} does not exist')
    cpu = args.cpu or not has_cuda(sys.executable)
    try:
        check = Check(args.out, sys.executable, cpu, args.wheels, args.mmcv_wheel, args.budget,
                      args.tests_k, steps)  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    start = time.monotonic()
    print(f'[gpu-check] {"CPU mode (tiny settings)" if cpu else "GPU"}; writing {check.out}')
    for step in (s for s in STEPS if s in steps):
        own = getattr(check, f'step_{step}', None)  # else a measurement step of settings.py
        if cpu and step in CPU_LEAVES_OUT:
            check.record(step, GPU_ONLY, 0.0, note=CPU_LEAVES_OUT[step])
        elif own:
            own()
        else:
            check.measure(step)
    total = round(time.monotonic() - start, 1)
    write_summary(check.out, total, cpu)
    failed = [r['step'] for r in check.records if r['status'] not in ('passed', GPU_ONLY)]
    print(
        f'[gpu-check] done in {total:.0f} s; failed: {failed or "none"}; see {check.out}/summary.md'
    )
    return 1 if failed else 0


if __name__ == '__main__':
    raise SystemExit(main())
