"""Check and measure a GPU machine in one command: `make gpu-check`.

    python tools/misc/gpu_check.py --out OUT [--wheels DIR] [--mmcv-wheel FILE]
        [--cpu] [--steps install,env,tests,demo,attention,benchmark,profile]

Runs each step in its own process with a time limit and writes everything
into OUT: ``env.json`` (GPU, driver, torch, CUDA, cuDNN, NCCL), ``steps.json``
(status, exit code and seconds of every step), ``logs/<step>.log``,
``results/*.json`` (every figure), ``profile_*.txt`` (torch.profiler tables)
and ``summary.md`` (the tables as they go into the README and
docs/performance.md, and the targets checked). A failed or timed-out step is
recorded and the next one runs. The steps run in the order below: what no
earlier GPU run has finished (the demo) before what re-measures.

Steps:
  install    skipped when mmcv (with ops), mmdet, mmseg and mmengine import and,
             on a GPU, mmcv's CUDA ops agree with its CPU kernels. Otherwise,
             from ``--wheels`` (a folder of wheels, no package index needed):
             every wheel but mmcv's into OUT-independent
             ``work_dirs/gpu-check/site`` (``pip --target --no-deps``), mmcv from
             ``--mmcv-wheel`` when given, else built from ``mmcv-2.1.0.tar.gz``
             in ``--wheels`` with CUDA ops for this GPU; then the CUDA ops are
             checked against the CPU kernels. Later steps put that folder and
             the repository on PYTHONPATH: the preinstalled torch is used as it is.
  env        versions of the machine and the stack as installed.
  tests      the ``gpu`` tests (tests/gpu/test_gpu.py); skipped with their reason
             without CUDA. With the demo step in the run, the one-process
             ``dist_train.sh`` test is left to the demo, which runs the same
             path to the end.
  demo       the demo detector (configs/demo/mask_rcnn_dsnet_t_dsfpn_demo.py)
             trained with tools/dist_train.sh (one process per GPU, NCCL,
             ``--amp``), then tools/test.py; the bbox mAP must reach 0.3.
             DDP's "Grad strides do not match" warnings in its log are counted.
  attention  the SDPA backend of every DS-Block attention of DS-Net-T/S/B in
             fp32, fp16 and bf16 (tools/analysis_tools/attention_backends.py),
             and each DS-Net-S attention at 800x1344 (2 images) timed per
             kernel, unfolded and folded (tools/analysis_tools/attention_kernels.py).
  benchmark  tools/analysis_tools/benchmark.py: backbones (DS-Net-T/S/B,
             ResNet-50, Swin-T, PVTv2-b2) images/s at 224 batch 64 in fp32,
             bf16 and fp16 autocast and training step time and peak memory at
             800x1344 batch 2; Mask R-CNN with DS-Net-S + FPN / + DS-FPN,
             R-50 + FPN and Swin-T + FPN: training iteration (fp32 and AMP) and
             fp32 inference on 2 images of 800x1333. Interleaved trials, medians.
  profile    torch.profiler table of one DS-Net-S Mask R-CNN training
             iteration, fp32 and AMP (tools/analysis_tools/profile_detector.py),
             and of DS-Net-S inference at 224 batch 64 in fp32 and bf16 autocast
             with the share of the wall time the kernels fill
             (tools/analysis_tools/profile_backbone.py).

``--cpu`` (or a machine without CUDA) runs the same steps and writes the same
files with tiny settings on the CPU, in a few minutes: fewer models, small
inputs, one trial, a one-epoch demo on 8 images without AMP. The tests run it
so that this script cannot rot. Standard library only: it must run before
anything is installed.
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

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from gpu_check_summary import write_summary  # noqa: E402 - the module beside this one

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STEPS = ('install', 'env', 'tests', 'demo', 'attention', 'benchmark', 'profile')
DEMO_CONFIG = 'configs/demo/mask_rcnn_dsnet_t_dsfpn_demo.py'
DEMO_MAP_TARGET = 0.3
GRAD_STRIDE_WARNING = 'Grad strides do not match bucket view strides'
# Set in every step's processes, so those left by a stopped step can be found
# (torchrun's workers run in sessions of their own).
STEP_MARKER = 'MMDSNET_GPU_CHECK_STEP'
# What a run writes into OUT; a reused OUT is cleared of it first, so no
# result of an earlier run passes for this one's.
OUT_FILES = ('env.json', 'steps.json', 'summary.md', 'profile_*.txt')
OUT_FOLDERS = ('logs', 'results')
MMCV_VERSION = '2.1.0'

# What each step runs with, on a GPU and in the CPU mode.
GPU_SETTINGS = dict(
    backbones='DS-Net-T,DS-Net-S,DS-Net-B,ResNet-50,Swin-T,PVTv2-b2',
    backbone_setting='800x1344 b2',
    throughput_setting='224 b64',
    precisions='fp32,bf16,fp16',
    detectors='MaskRCNN R-50+FPN,MaskRCNN DS-Net-S+FPN,MaskRCNN DS-Net-S+DS-FPN,'
    'MaskRCNN Swin-T+FPN',
    det_size='800x1333',
    det_precisions='fp32,amp',
    trials='3',
    warmup='1',
    attention_archs='tiny,small,base',
    attention_settings='224 b1,800x1344 b1',
    attention_precisions='fp32,fp16,bf16',
    kernels=dict(
        arch='small',
        size=(800, 1344),
        batch=2,
        kernels=('efficient', 'flash'),
        precisions=('fp32', 'fp16'),
        trials=3,
    ),  # fmt: skip
    profile_size='800x1333',
    profile_warmup='2',
    profile_amp=True,
    # the inference throughput case whose autocast figure missed its target
    profile_backbone=dict(arch='small', size=224, batch=64),
    profile_backbone_precisions=['fp32', 'bf16'],
    demo_options=[],
    demo_amp=True,
)
CPU_SETTINGS = dict(
    backbones='DS-Net-T,ResNet-50',
    backbone_setting='64x96 b1',
    throughput_setting='64 b2',
    precisions='fp32,bf16',
    detectors='MaskRCNN R-50+FPN,MaskRCNN DS-Net-S+FPN',
    det_size='64x96',
    det_precisions='fp32',
    trials='1',
    warmup='0',
    attention_archs='tiny',
    attention_settings='64 b1',
    attention_precisions='fp32,bf16',
    kernels=dict(
        arch='tiny', size=(256, 320), batch=2, kernels=('flash',), precisions=('fp32',), trials=1
    ),  # fmt: skip
    profile_size='64x96',
    profile_warmup='1',
    profile_amp=False,
    profile_backbone=dict(arch='tiny', size=64, batch=2),
    profile_backbone_precisions=['bf16'],
    # one epoch on 8 training and 4 validation images of 96 px
    demo_options=[
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1',
        'train_dataloader.dataset.indices=8',
        'val_dataloader.dataset.indices=4',
        'test_dataloader.dataset.indices=4',
        'train_dataloader.dataset.pipeline.2.scale=(96,96)',
        'val_dataloader.dataset.pipeline.1.scale=(96,96)',
        'test_dataloader.dataset.pipeline.1.scale=(96,96)',
        'param_scheduler.0.end=1',
        'param_scheduler.1.end=1',
    ],
    demo_amp=False,
)
# Seconds each step may take before it is stopped (the GPU check must end in
# under 9 minutes with a prebuilt mmcv; building mmcv takes about 5 more).
# On the H100 of 2026-11-27: install 28-47 s, env 4-6, the AMP Mask R-CNN
# test 24, attention 34, benchmark 112 (5 trials), profile 57; the demo's
# iterations took 0.26 s (300 of them) between cuDNN's graph builds (3.8-9.4 s),
# which DS-Net's attention no longer uses.
LIMITS = dict(
    env=60,
    install=120,
    install_build=900,
    tests=180,
    attention=120,
    benchmark=220,
    profile=120,
    demo=240,
)


class Check:
    """Runs the steps, keeps their records and writes OUT."""

    def __init__(
        self, out, python, cpu, wheels=None, mmcv_wheel=None, budget=None, tests_k=None,
        steps=STEPS,
    ):  # fmt: skip
        self.tests_k = tests_k
        self.steps = steps
        self.out = osp.abspath(out)
        self.deadline = None if budget is None else time.monotonic() + budget
        self.python = python
        self.cpu = cpu
        self.wheels = wheels
        self.mmcv_wheel = mmcv_wheel
        self.settings = CPU_SETTINGS if cpu else GPU_SETTINGS
        self.site = osp.join(ROOT, 'work_dirs', 'gpu-check', 'site')
        self.records = []
        for folder in OUT_FOLDERS:
            shutil.rmtree(osp.join(self.out, folder), ignore_errors=True)
            os.makedirs(osp.join(self.out, folder))
        for pattern in OUT_FILES:
            for path in glob.glob(osp.join(self.out, pattern)):
                os.remove(path)

    # -- running -------------------------------------------------------------
    def env(self):
        """Environment of every step: the site folder (when made) and the repo first."""
        env = dict(os.environ, PYTHON=self.python, PYTHONUNBUFFERED='1')
        paths = ([self.site] if osp.isdir(self.site) else []) + [ROOT]
        if env.get('PYTHONPATH'):
            paths.append(env['PYTHONPATH'])
        env['PYTHONPATH'] = os.pathsep.join(paths)
        if self.cpu:
            env['CUDA_VISIBLE_DEVICES'] = ''
        return env

    def run(self, step, commands, limit, keep_going=False, ok_codes=(0,)):
        """Run shell-free commands in turn into logs/<step>.log; record the step.

        The step gets ``limit`` seconds, or what is left of the whole run's
        budget if that is less (a step with under 10 s left is skipped). A
        command past the limit is stopped with all its processes
        (``stop_processes``), so the next step has the GPU to itself.
        """
        log_path = osp.join(self.out, 'logs', f'{step}.log')
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left < 10:
                self.record(step, 'skipped', 0.0, note='the run budget was spent')
                return False
            limit = min(limit, left)
        start = time.monotonic()
        status, code = 'passed', 0
        with open(log_path, 'w') as log:
            for command in commands:
                left = limit - (time.monotonic() - start)
                log.write(f'$ {" ".join(command)}\n')
                log.flush()
                if left <= 0:
                    status, code = 'timeout', None
                    break
                marker = f'{step}-{os.getpid()}-{time.monotonic_ns()}'
                process = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=dict(self.env(), **{STEP_MARKER: marker}),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    code = process.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    stop_processes(process, marker)
                    status, code = 'timeout', None
                    log.write(f'\n[gpu-check] {step}: stopped after {limit:.0f} s\n')
                    break
                if code not in ok_codes:
                    status = 'failed'
                    if not keep_going:
                        break
        seconds = round(time.monotonic() - start, 1)
        self.record(step, status, seconds, exit_code=code, log=f'logs/{step}.log')
        return status == 'passed'

    def record(self, step, status, seconds, **extra):
        self.records.append(dict(step=step, status=status, seconds=seconds, **extra))
        print(f'[gpu-check] {step}: {status} in {seconds:.0f} s', flush=True)
        self.write_json('steps.json', self.records)

    def write_json(self, name, data):
        with open(osp.join(self.out, name), 'w') as f:
            json.dump(data, f, indent=1)

    def py(self, *args):
        return [self.python, *args]

    # -- steps ---------------------------------------------------------------
    def step_env(self):
        commands = [
            self.py(
                osp.join(ROOT, 'tools/misc/gpu_check.py'),
                '--describe-env',
                osp.join(self.out, 'env.json'),
            )
        ]
        self.run('env', commands, LIMITS['env'])

    def stack_works(self):
        """mmcv (with ops), mmdet, mmseg and mmengine import; on a GPU the CUDA ops agree."""
        device = 'cpu' if self.cpu else 'cuda'
        probe = subprocess.run(
            self.py(
                osp.join(ROOT, 'tools/install/cuda_build_env.py'),
                '--verify-ops',
                device,
                '--expect-mmcv',
                MMCV_VERSION,
            ),
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
        )
        imports = subprocess.run(
            self.py('-c', 'import mmdet.models, mmseg.models, mmengine, mmdsnet'),
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
        )
        return probe.returncode == 0 and imports.returncode == 0, probe.stdout.strip()

    def step_install(self):
        works, verified = self.stack_works()
        if works and not self.wheels:
            with open(osp.join(self.out, 'logs', 'install.log'), 'w') as log:
                log.write(f'already installed: {verified}\n')
            self.record('install', 'passed', 0.0, note='already installed', verified=verified)
            return
        if not self.wheels:
            self.record(
                'install',
                'failed',
                0.0,
                note='the OpenMMLab stack does not import here and no --wheels folder was '
                'given (make gpu-check WHEELS=folder [MMCV_WHEEL=file])',
            )
            return
        wheels = sorted(
            w
            for w in glob.glob(osp.join(self.wheels, '*.whl'))
            if not osp.basename(w).startswith('mmcv-')
        )
        setuptools = [w for w in wheels if osp.basename(w).startswith('setuptools-')]
        pip = self.py(
            '-m',
            'pip',
            'install',
            '--no-index',
            '--no-deps',
            '--upgrade',
            '--disable-pip-version-check',
            '--target',
            self.site,
        )
        os.makedirs(self.site, exist_ok=True)
        commands = [pip + setuptools, pip + [w for w in wheels if w not in setuptools]]
        limit = LIMITS['install']
        built = False
        if self.mmcv_wheel:
            commands.append(pip + [self.mmcv_wheel])
        else:
            sdist = osp.join(self.wheels, f'mmcv-{MMCV_VERSION}.tar.gz')
            commands.append(
                self.py(
                    osp.join(ROOT, 'tools/misc/gpu_check.py'),
                    '--build-mmcv',
                    sdist,
                    '--site',
                    self.site,
                    *(['--cpu'] if self.cpu else []),
                )
            )
            limit, built = LIMITS['install_build'], True
        commands.append(
            self.py(
                osp.join(ROOT, 'tools/install/cuda_build_env.py'),
                '--verify-ops',
                'cpu' if self.cpu else 'cuda',
                '--expect-mmcv',
                MMCV_VERSION,
            )
        )
        commands.append(self.py('-c', 'import mmdet.models, mmseg.models, mmdsnet; print("ok")'))
        self.run('install', commands, limit)
        self.records[-1]['mmcv'] = 'built from source' if built else self.mmcv_wheel
        self.write_json('steps.json', self.records)

    def step_tests(self):
        """The gpu tests in two runs, the training one last: a run stopped at the
        step's limit keeps the report of the first. The training one only
        without the demo step (which runs dist_train.sh to the end)."""
        commands = []
        parts = [('fast', 'not dist_train')]
        if 'demo' not in self.steps or self.tests_k:
            parts.append(('train', 'dist_train'))
        for part, select in parts:
            if self.tests_k:
                select = f'({select}) and ({self.tests_k})'
            xml = osp.join(self.out, 'results', f'gpu_tests_{part}.xml')
            commands.append(
                self.py('-m', 'pytest', 'tests/gpu/test_gpu.py', '-m', 'gpu', '-k', select, '-rs',
                        '-v', '--tb=short', '-p', 'no:cacheprovider', f'--junitxml={xml}')
            )  # fmt: skip
        # pytest's 5: a --tests-k that leaves one of the two runs nothing to run
        self.run('tests', commands, LIMITS['tests'], keep_going=True, ok_codes=(0, 5))
        if len(parts) == 1:
            note = 'test_dist_train_nccl_amp_two_epochs: left to the demo step'
            old = self.records[-1].get('note')
            self.records[-1]['note'] = f'{old}; {note}' if old else note
        counts = None
        for part in ('fast', 'train'):
            xml = osp.join(self.out, 'results', f'gpu_tests_{part}.xml')
            if osp.isfile(xml):
                counts = merge_counts(counts, junit_counts(xml))
        if counts:
            self.records[-1]['tests'] = counts
            self.write_json('steps.json', self.records)

    def step_attention(self):
        s = self.settings
        command = self.py(
            'tools/analysis_tools/attention_backends.py',
            '--archs', s['attention_archs'],
            '--settings', s['attention_settings'],
            '--precisions', s['attention_precisions'],
            '--out', osp.join(self.out, 'results', 'attention_backends.json'),
        )  # fmt: skip
        k = s['kernels']
        kernels = self.py(
            'tools/analysis_tools/attention_kernels.py', '--arch', k['arch'],
            '--shape', *map(str, k['size']), '--batch', str(k['batch']),
            '--kernels', *k['kernels'], '--precisions', *k['precisions'],
            '--trials', str(k['trials']), '--fold',
            '--out', osp.join(self.out, 'results', 'attention_kernels.json'),
        )  # fmt: skip
        self.run('attention', [command, kernels], LIMITS['attention'], keep_going=True)

    def step_benchmark(self):
        s = self.settings
        common = [
            '--trials', s['trials'], '--warmup', s['warmup'],
            *(['--no-memory'] if self.cpu else []),
        ]  # fmt: skip
        backbones = self.py(
            'tools/analysis_tools/benchmark.py',
            '--suites', 'backbone,throughput',
            '--backbones', s['backbones'],
            '--settings', s['backbone_setting'],
            '--modes', 'train',
            '--throughput-setting', s['throughput_setting'],
            '--precisions', s['precisions'],
            '--out', osp.join(self.out, 'results', 'benchmark_backbones.json'),
            *common,
        )  # fmt: skip
        detectors = self.py(
            'tools/analysis_tools/benchmark.py',
            '--suites', 'detector',
            '--detectors', s['detectors'],
            '--modes', 'train,eval',
            '--det-size', s['det_size'],
            '--det-precisions', s['det_precisions'],
            '--out', osp.join(self.out, 'results', 'benchmark_detectors.json'),
            *common,
        )  # fmt: skip
        self.run('benchmark', [backbones, detectors], LIMITS['benchmark'])

    def step_profile(self):
        s = self.settings
        base = self.py(
            'tools/analysis_tools/profile_detector.py',
            '--size', s['profile_size'],
            '--warmup', s['profile_warmup'],
        )  # fmt: skip
        commands = [base + ['--out', osp.join(self.out, 'profile_dsnet-s_maskrcnn_fp32.txt')]]
        if s['profile_amp']:
            commands.append(
                base + ['--amp', '--out', osp.join(self.out, 'profile_dsnet-s_maskrcnn_amp.txt')]
            )
        inference = s['profile_backbone']
        arch, size, batch = inference['arch'], str(inference['size']), str(inference['batch'])
        for precision in s['profile_backbone_precisions']:
            name = f'profile_dsnet-{arch[0]}_inference_{size}b{batch}_{precision}.txt'
            commands.append(
                self.py('tools/analysis_tools/profile_backbone.py', '--arch', arch,
                        '--shape', size, size, '--batch', batch, '--precision', precision,
                        '--out', osp.join(self.out, name))
            )  # fmt: skip
        self.run('profile', commands, LIMITS['profile'], keep_going=True)

    def step_demo(self):
        s = self.settings
        work_dir = osp.join(ROOT, 'work_dirs', 'gpu-check', 'demo')
        shutil.rmtree(work_dir, ignore_errors=True)
        nproc = '1' if self.cpu else 'gpus'
        train = [
            'bash', 'tools/dist_train.sh', DEMO_CONFIG, nproc, '--work-dir', work_dir,
            *(['--amp'] if s['demo_amp'] else []),
            *(['--cfg-options', *s['demo_options']] if s['demo_options'] else []),
        ]  # fmt: skip
        test = self.py(
            osp.join(ROOT, 'tools/misc/gpu_check.py'), '--test-demo', work_dir,
        )  # fmt: skip
        commands = [
            self.py('tools/demo/make_demo_data.py', '--out', 'data/demo'),
            [self.python, osp.join(ROOT, 'tools/misc/gpu_check.py'), '--train-demo', *train],
            test,
        ]
        ok = self.run('demo', commands, LIMITS['demo'])
        metrics = demo_metrics(work_dir)
        record = self.records[-1]
        record.update(metrics)
        record['amp'] = s['demo_amp']
        demo_log = osp.join(self.out, 'logs', 'demo.log')
        if osp.isfile(demo_log):  # not when the budget left the step out
            with open(demo_log, errors='replace') as log:
                record['grad_stride_warnings'] = log.read().count(GRAD_STRIDE_WARNING)
        if ok and not self.cpu:
            reached = metrics.get('bbox_mAP', 0) >= DEMO_MAP_TARGET
            record['target'] = f'bbox mAP >= {DEMO_MAP_TARGET}: {"met" if reached else "missed"}'
        self.write_json('steps.json', self.records)
        self.write_json(osp.join('results', 'demo.json'), record)


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


def merge_counts(a, b):
    """Two junit_counts results as one."""
    if a is None:
        return b
    merged = {k: a[k] + b[k] for k in ('passed', 'failed', 'skipped')}
    merged['cases'] = a['cases'] + b['cases']
    return merged


def junit_counts(path):
    """passed/failed/skipped counts and the skip reasons of a pytest junit file."""
    root = ET.parse(path).getroot()
    counts = dict(passed=0, failed=0, skipped=0, cases=[])
    for case in root.iter('testcase'):
        name = case.get('name')
        if case.find('skipped') is not None:
            outcome = 'skipped'
            reason = case.find('skipped').get('message', '')
        elif case.find('failure') is not None or case.find('error') is not None:
            outcome, reason = 'failed', ''
        else:
            outcome, reason = 'passed', ''
        counts[outcome] += 1
        counts['cases'].append(
            dict(name=name, outcome=outcome, seconds=float(case.get('time', 0)), reason=reason)
        )
    return counts


def demo_metrics(work_dir):
    """Training wall time and the tools/test.py metrics of the demo run."""
    metrics = {}
    timing = osp.join(work_dir, 'gpu_check_times.json')
    if osp.isfile(timing):
        with open(timing) as f:
            metrics.update(json.load(f))
    paths = sorted(glob.glob(osp.join(work_dir, 'test', '*', '*.json')))
    if paths:
        with open(paths[-1]) as f:
            last = [json.loads(line) for line in f if line.strip()][-1]
        for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'):
            if key in last:
                metrics[key.split('/')[1]] = last[key]
    return metrics


def train_demo(command):
    """Run the demo training (``dist_train.sh``, NPROC 'gpus' = one per GPU); time it."""
    import torch  # only in the step's own process

    if command[3] == 'gpus':
        command[3] = str(max(1, torch.cuda.device_count()))
    work_dir = command[command.index('--work-dir') + 1]
    os.makedirs(work_dir, exist_ok=True)
    start = time.monotonic()
    code = subprocess.run(command, cwd=ROOT).returncode
    with open(osp.join(work_dir, 'gpu_check_times.json'), 'w') as f:
        json.dump(
            dict(train_seconds=round(time.monotonic() - start, 1), processes=int(command[3])), f
        )
    return code


def test_demo(work_dir):
    """tools/test.py on the demo's last checkpoint, with the config training wrote."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = osp.join(work_dir, osp.basename(f.read().strip()))
    config = osp.join(work_dir, osp.basename(DEMO_CONFIG))
    start = time.monotonic()
    code = subprocess.run(
        [sys.executable, 'tools/test.py', config, checkpoint, '--work-dir',
         osp.join(work_dir, 'test')],
        cwd=ROOT,
    ).returncode  # fmt: skip
    times = osp.join(work_dir, 'gpu_check_times.json')
    with open(times) as f:
        data = json.load(f)
    data['test_seconds'] = round(time.monotonic() - start, 1)
    with open(times, 'w') as f:
        json.dump(data, f)
    return code


def describe_env(path):
    """Versions of the machine and the stack, as JSON (run in the step's process)."""
    import platform

    info = dict(python=platform.python_version(), machine=platform.machine())
    try:
        smi = subprocess.run(
            ['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if smi.returncode == 0:
            info['nvidia_smi'] = [line.strip() for line in smi.stdout.splitlines() if line]
            info['driver'] = info['nvidia_smi'][0].split(',')[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        info['nvidia_smi'] = None
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
        info['cuda_available'] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info.update(
                gpu=torch.cuda.get_device_name(),
                capability='%d.%d' % torch.cuda.get_device_capability(),
                gpu_count=torch.cuda.device_count(),
                cudnn=torch.backends.cudnn.version(),
            )
            version = torch.cuda.nccl.version()  # a tuple in torch 2.x
            info['nccl'] = '.'.join(map(str, version)) if isinstance(version, tuple) else version
    except ImportError as error:
        info['torch'] = f'not importable: {error}'
    for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmdsnet', 'numpy'):
        try:
            info[name] = __import__(name).__version__
        except Exception as error:  # noqa: BLE001 - recorded, not raised
            info[name] = f'not importable: {type(error).__name__}: {error}'
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version

        info['mmcv_ops'] = dict(cuda=get_compiling_cuda_version(), compiler=get_compiler_version())
    except Exception as error:  # noqa: BLE001
        info['mmcv_ops'] = f'not importable: {error}'
    with open(path, 'w') as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))


def build_mmcv(sdist, site, cpu):
    """Build mmcv from its sdist into ``site`` with CUDA ops for the visible GPUs."""
    import torch

    env = dict(os.environ, MMCV_WITH_OPS='1')
    if not cpu:
        env['FORCE_CUDA'] = '1'
        env.setdefault('TORCH_CUDA_ARCH_LIST', '%d.%d' % torch.cuda.get_device_capability())
    env.setdefault('MAX_JOBS', str(os.cpu_count() or 1))
    # mmcv's setup.py imports pkg_resources: the site folder's setuptools < 81 first.
    env['PYTHONPATH'] = os.pathsep.join(p for p in (site, env.get('PYTHONPATH')) if p)
    start = time.monotonic()
    code = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps',
         '--no-build-isolation', '--target', site, sdist],
        env=env,
    ).returncode  # fmt: skip
    print(f'[gpu-check] mmcv build took {time.monotonic() - start:.0f} s (exit {code})')
    return code


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
    # internal entry points of the steps' own processes
    parser.add_argument('--describe-env', help=argparse.SUPPRESS)
    parser.add_argument('--build-mmcv', help=argparse.SUPPRESS)
    parser.add_argument('--site', help=argparse.SUPPRESS)
    parser.add_argument('--train-demo', nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument('--test-demo', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.describe_env:
        describe_env(args.describe_env)
        return 0
    if args.build_mmcv:
        return build_mmcv(args.build_mmcv, args.site, args.cpu)
    if args.train_demo:
        return train_demo(args.train_demo)
    if args.test_demo:
        return test_demo(args.test_demo)

    steps = [s for s in args.steps.split(',') if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f'unknown steps {unknown}; choose from {", ".join(STEPS)}')
    for name, path in (('--wheels', args.wheels), ('--mmcv-wheel', args.mmcv_wheel)):
        if path and not osp.exists(path):
            parser.error(f'{name} {path} does not exist')
    cpu = args.cpu or not has_cuda(sys.executable)
    check = Check(
        args.out, sys.executable, cpu, args.wheels, args.mmcv_wheel, args.budget, args.tests_k,
        steps,
    )  # fmt: skip
    start = time.monotonic()
    print(f'[gpu-check] {"CPU mode (tiny settings)" if cpu else "GPU"}; writing {check.out}')
    for step in STEPS:
        if step in steps:
            getattr(check, f'step_{step}')()
    total = round(time.monotonic() - start, 1)
    write_summary(check.out, total, cpu)
    failed = [r['step'] for r in check.records if r['status'] != 'passed']
    print(
        f'[gpu-check] done in {total:.0f} s; failed: {failed or "none"}; see {check.out}/summary.md'
    )
    return 1 if failed else 0


def has_cuda(python):
    """Whether torch sees a GPU (asked in a child: torch may not import here yet)."""
    probe = subprocess.run(
        [python, '-c', 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'],
        capture_output=True,
    )
    return probe.returncode == 0


if __name__ == '__main__':
    raise SystemExit(main())
