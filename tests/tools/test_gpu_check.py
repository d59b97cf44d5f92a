"""`make gpu-check` in its CPU mode: the same steps and files as on a GPU, with
tiny settings, so that the one command run on a lent GPU machine cannot rot."""

import json
import os
import os.path as osp
import subprocess
import sys
import time

import pytest
from helpers import REPO_ROOT, load_tool

# Every test here starts processes or trains.
pytestmark = pytest.mark.integration

STEPS = ['install', 'env', 'tests', 'demo', 'attention', 'benchmark', 'profile', 'demo_bf16']
TOOL = osp.join(REPO_ROOT, 'tools', 'gpu_check')
SCRIPT = osp.join(TOOL, 'gpu_check.py')


def load_gpu_check(monkeypatch):
    """gpu_check.py as a module, its folder on the path as when it runs (settings, summary)."""
    monkeypatch.syspath_prepend(TOOL)
    return load_tool('tools/gpu_check/gpu_check.py')


@pytest.fixture(scope='module')
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check') / 'out'
    result = subprocess.run(
        ['make', 'gpu-check', 'CPU=1', f'OUT={out}', f'GPU_PYTHON={sys.executable}'],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=''),
    )
    return result, out


@pytest.mark.slow
def test_cpu_mode_runs_every_step_and_writes_the_files(cpu_run):
    result, out = cpu_run
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(out / 'steps.json') as f:
        steps = json.load(f)
    assert [s['step'] for s in steps] == STEPS
    # every step ran but the bf16 demo, which needs a GPU and says so
    assert {s['step']: s['status'] for s in steps} == dict.fromkeys(STEPS, 'passed') | {
        'demo_bf16': 'gpu only'
    }, steps
    assert 'needs a GPU' in steps[-1]['note']
    # the gpu tests were collected and skipped with their reason, not silently absent
    tests = next(s for s in steps if s['step'] == 'tests')['tests']
    assert tests['skipped'] >= 20 and tests['passed'] == tests['failed'] == 0
    assert {c['reason'] for c in tests['cases']} == {'needs a CUDA GPU'}
    # the dist_train.sh test is left to the demo step, which runs it to the end
    assert not any('dist_train' in c['name'] for c in tests['cases'])
    for name in ('env.json', 'summary.md', 'profile_dsnet-s_maskrcnn_fp32.txt',
                 'profile_dsnet-t_inference_64b2_fp32.txt'):  # fmt: skip
        assert (out / name).is_file(), name
    for step in STEPS[:-1]:
        assert (out / 'logs' / f'{step}.log').is_file(), step
    assert not (out / 'logs' / 'demo_bf16.log').exists()


@pytest.mark.slow
def test_cpu_mode_figures_reach_the_summary(cpu_run):
    result, out = cpu_run
    assert result.returncode == 0
    with open(out / 'results' / 'benchmark_backbones.json') as f:
        backbones = json.load(f)['results']
    groups = {r['group'] for r in backbones}
    assert groups == {
        'backbone 64x96 b1 train',
        'backbone 64x96 b1 train bf16',
        'throughput 64 b2 fp32',
        'throughput 64 b2 bf16',
    }
    assert all(r['images_per_s'] > 0 for r in backbones if r['group'].startswith('throughput'))
    with open(out / 'results' / 'benchmark_detectors.json') as f:
        detectors = json.load(f)['results']
    assert {(r['group'], r['name']) for r in detectors} >= {
        ('Mask R-CNN 2x64x96 train fp32', 'MaskRCNN DS-Net-S+FPN'),
        ('Mask R-CNN 2x64x96 eval fp32', 'MaskRCNN R-50+FPN'),
    }
    with open(out / 'results' / 'benchmark_detectors_roi_extractor.json') as f:
        pair = json.load(f)['results']
    # the training iteration's phases, timed for each entry
    assert {r['name'] for r in pair} == {
        'MaskRCNN DS-Net-S+FPN',
        'MaskRCNN DS-Net-S+FPN mmcv RoIAlign',
    }
    assert all(r['forward_loss_ms'] > 0 and r['backward_ms'] > 0 for r in pair)
    with open(out / 'results' / 'attention_backends.json') as f:
        attention = json.load(f)['results']
    # DS-Net-T has 9 blocks of 3 attentions; on the CPU the fused kernel takes them all
    assert [r['chosen'] for r in attention] == [{'flash': 27}, {'flash': 27}]
    with open(out / 'results' / 'demo.json') as f:
        demo = json.load(f)
    # the figures of tools/demo/demo.sh's demo_summary.json
    assert demo['processes'] == 1 and demo['total_seconds'] > demo['train_seconds'] > 0
    assert demo['grad_stride_warnings'] == 0
    assert demo['status'] == 'passed' and 'target' not in demo  # no mAP target on the CPU
    assert demo['amp'] is None  # mmengine's AMP needs a GPU
    assert not (out / 'results' / 'demo_bf16.json').exists()
    with open(out / 'results' / 'attention_kernels.json') as f:
        kernels = json.load(f)
    # DS-Net-T at 256x320: attn_split='auto' rewrites both co-attentions of stages 1-3
    # (132 SMs' rule), e.g. stage 1's local queries folded 80 times
    rewritten = [(r['stage'], r['folds'], r['splits']) for r in kernels['rows']
                 if r['split'] == 'auto' and (r['folds'], r['splits']) != (1, 1)]  # fmt: skip
    assert rewritten == [(1, 80, 1), (1, 1, 80), (2, 20, 1), (2, 1, 20), (3, 5, 1), (3, 1, 5)]
    summary = (out / 'summary.md').read_text()
    for heading in ('## Machine', '## Steps', '## Targets', '## Backbones', '## Mask R-CNN',
                    '## SDPA backend', "## attn_split 'never' against 'auto'", '## GPU tests',
                    '## Demo', '## Profile'):  # fmt: skip
        assert heading in summary, heading
    assert 'not run' not in summary
    assert '| DS-Net-T | 64 b1 | fp32 | flash 27 |' in summary
    assert (
        '| 1 | local q, global kv | 5120x80 | flash | fp32 | 80 / 1 | 160 / 160 | 4 / 320 |'
        in summary
    )
    assert 'DS-Net-T eval at 2x64x64, fp32, on cpu' in summary  # the inference profile
    assert 'cudnn.benchmark on' in summary  # ... and again with it
    assert 'benchmark_detectors_roi_extractor.json' in summary and 'fwd + loss ms' in summary
    assert '| demo | 1 | no |' in summary and '| demo_bf16 | 1 |' not in summary  # Demo rows
    assert '| demo_bf16 | gpu only | 0 | bf16 AMP needs a GPU: on the CPU this step' in summary


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    script = SCRIPT
    for args, message in (
        (['--steps', 'env,bogus'], "unknown steps ['bogus']"),
        (['--wheels', str(tmp_path / 'missing')], 'does not exist'),
    ):
        result = subprocess.run(
            [sys.executable, script, '--out', str(tmp_path / 'out'), *args],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_step_past_its_limit_stops_every_process_it_started(tmp_path, monkeypatch):
    """Also a grandchild in a session of its own, as torchrun starts its workers:
    a demo stopped at its limit must not train on while the next steps measure."""
    gpu_check = load_gpu_check(monkeypatch)
    check = gpu_check.Check(str(tmp_path / 'out'), sys.executable, cpu=True)
    pid_file = tmp_path / 'worker.pid'
    spawn = (
        'import subprocess, sys, time; '
        "w = subprocess.Popen(['sleep', '120'], start_new_session=True); "
        f"open({str(pid_file)!r}, 'w').write(str(w.pid)); time.sleep(120)"
    )
    start = time.monotonic()
    assert not check.run('probe', [[sys.executable, '-c', spawn]], limit=3)
    assert time.monotonic() - start < 60
    assert check.records[-1]['status'] == 'timeout'
    worker = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is delivered asynchronously
        if not running(worker):
            break
        time.sleep(0.1)
    assert not running(worker), f'worker {worker} survived the stopped step'


def running(pid):
    """Alive and not a zombie waiting for its reaper."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def run_skipping_every_step(out):
    """gpu_check.py with a budget of 1 s: the steps are skipped, only the summary is written."""
    return subprocess.run(
        [sys.executable, SCRIPT, '--out', str(out), '--cpu', '--budget', '1',
         '--steps', 'env,demo,attention'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_reused_out_keeps_nothing_of_the_earlier_run_and_skipped_steps_write_a_summary(
    tmp_path,
):
    out = tmp_path / 'out'
    assert run_skipping_every_step(out).returncode == 1  # the first run marks OUT as its own
    (out / 'results' / 'attention_kernels.json').write_text('{"rows": []}')
    (out / 'profile_dsnet-s_maskrcnn_fp32.txt').write_text('an earlier run')
    result = run_skipping_every_step(out)
    assert result.returncode == 1, result.stderr[-3000:]
    steps = json.loads((out / 'steps.json').read_text())
    assert [(s['step'], s['status']) for s in steps] == [
        ('env', 'skipped'),
        ('demo', 'skipped'),
        ('attention', 'skipped'),
    ]
    assert not (out / 'results' / 'attention_kernels.json').exists()
    assert not (out / 'profile_dsnet-s_maskrcnn_fp32.txt').exists()
    assert '## Demo' in (out / 'summary.md').read_text()


def test_out_without_the_marker_is_refused_and_left_as_it_is(tmp_path):
    """--out clears only a folder an earlier gpu-check run marked as its own."""
    out = tmp_path / 'mine'
    (out / 'results').mkdir(parents=True)
    (out / 'results' / 'paper.json').write_text('{}')
    (out / 'summary.md').write_text('my notes')
    result = run_skipping_every_step(out)
    assert result.returncode == 2
    assert 'holds files and is not a gpu-check output folder' in result.stderr
    assert (out / 'results' / 'paper.json').read_text() == '{}'
    assert (out / 'summary.md').read_text() == 'my notes'
    assert sorted(p.name for p in out.iterdir()) == ['results', 'summary.md']
    # an empty folder is taken and marked
    (tmp_path / 'empty').mkdir()
    assert run_skipping_every_step(tmp_path / 'empty').returncode == 1
    assert (tmp_path / 'empty' / 'summary.md').is_file()


def test_install_step_installs_the_wheels_and_builds_mmcv_only_through_install_env_sh(
    tmp_path, monkeypatch
):
    gpu_check = load_gpu_check(monkeypatch)
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    for name in ('setuptools-80.10.2-py3-none-any.whl', 'mmengine-0.10.7-py3-none-any.whl',
                 'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl'):  # fmt: skip
        (wheels / name).write_bytes(b'')
    runs = []

    def install(mmcv_wheel, passes, failed_command=None, error=''):
        check = gpu_check.Check(str(tmp_path / 'out'), sys.executable, False, str(wheels),
                                mmcv_wheel)  # fmt: skip
        check.site = str(tmp_path / 'site')

        def run(step, commands, limit, env=None, **kwargs):
            runs.append((commands, limit, env))
            failure = {} if passes else dict(failed_command=failed_command, error=error)
            check.record(step, 'passed' if passes else 'failed', 0.0, **failure)
            return passes

        check.run = run
        check.step_install()
        return check.records[-1]

    install(None, passes=True)
    commands, limit, env = runs[-1]
    assert [osp.basename(c[-1]) for c in commands[:2]] == [
        'setuptools-80.10.2-py3-none-any.whl',  # first: mmcv's build needs its pkg_resources
        'mmengine-0.10.7-py3-none-any.whl',  # the prebuilt mmcv wheel is not taken unasked
    ]
    # the source build goes through the installer (its decision and patch), offline, into site
    assert commands[2] == ['bash', 'tools/install/install_env.sh', 'mmcv']
    # then every missing module named at once, before mmcv's ops are checked
    assert osp.basename(commands[3][1]) == 'check_imports.py'
    assert tuple(commands[3][2:]) == gpu_check.IMPORTS
    assert env == dict(PIP_NO_INDEX='1', PIP_FIND_LINKS=str(wheels),
                       PIP_TARGET=str(tmp_path / 'site'), PIP_UPGRADE='1')  # fmt: skip
    assert limit == gpu_check.LIMITS['install_build']
    assert commands[4][1:3] == ['tools/install/cuda_build_env.py', '--verify-ops']

    wheel = str(wheels / 'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl')
    record = install(wheel, passes=False, failed_command=4, error='[install] error: nms differs')
    commands, limit, env = runs[-1]
    assert commands[2][-1] == wheel and not env and limit == gpu_check.LIMITS['install']
    assert record['note'].startswith('mmcv-2.1.0-cp312-cp312-linux_x86_64.whl does not install')
    assert '[install] error: nms differs' in record['note']
    # a module the machine lacks is not blamed on the mmcv wheel
    missing = 'missing modules: six, regex (put their wheels into the wheels folder ...)'
    record = install(wheel, passes=False, failed_command=3, error=missing)
    assert record['note'].startswith(f'the stack does not import on this machine: {missing}')


def test_a_failed_step_records_which_command_failed_and_its_last_line(tmp_path, monkeypatch):
    gpu_check = load_gpu_check(monkeypatch)
    check = gpu_check.Check(str(tmp_path / 'out'), sys.executable, cpu=True)
    fails = [sys.executable, '-c', 'import sys; print("working"); sys.exit("ValueError: bad")']
    ok = [sys.executable, '-c', 'print("fine")']
    assert not check.run('probe', [ok, fails, ok], limit=60, keep_going=True)
    record = check.records[-1]
    assert (record['status'], record['failed_command'], record['error']) == (
        'failed', 1, 'ValueError: bad',
    )  # fmt: skip
    summary = load_tool('tools/gpu_check/summary.py')
    rows = summary.steps_section(check.out, 1.0)
    assert any('command 2 failed: ValueError: bad' in row for row in rows), rows


def test_the_gpu_demo_steps_run_the_missions_command_in_fp16_and_bf16(tmp_path, monkeypatch):
    """fp16: `--amp` as users type it; bf16: `--amp` with the wrapper's dtype set. Each demo
    in its own work dir, on one process per GPU (demo.sh's default: no NPROC)."""
    gpu_check = load_gpu_check(monkeypatch)
    check = gpu_check.Check(str(tmp_path / 'out'), sys.executable, cpu=False)
    runs = []

    def run(step, commands, limit, ok_codes=(0,), env=None, **kwargs):
        runs.append((step, commands, env))
        check.record(step, 'passed', 0.0)
        return True

    check.run = run
    check.step_demo()
    check.step_demo_bf16()
    (fp16, [fp16_command], fp16_env), (bf16, [bf16_command], bf16_env) = runs
    assert (fp16, bf16) == ('demo', 'demo_bf16')
    assert fp16_command == ['bash', 'tools/demo/demo.sh', 'det', '--amp']
    assert bf16_command == ['bash', 'tools/demo/demo.sh', 'det', '--amp', '--cfg-options',
                            'optim_wrapper.dtype=bfloat16']  # fmt: skip
    assert fp16_env['WORK_DIR'] != bf16_env['WORK_DIR'] and 'NPROC' not in bf16_env
    for step in ('demo', 'demo_bf16'):
        with open(tmp_path / 'out' / 'results' / f'{step}.json') as f:
            assert json.load(f)['amp'] == gpu_check.GPU[step]['amp']


def test_without_wheels_the_install_note_names_what_does_not_import(tmp_path, monkeypatch):
    gpu_check = load_gpu_check(monkeypatch)
    monkeypatch.setattr(gpu_check, 'IMPORTS', ('mmengine', 'absent_module_for_the_test'))
    check = gpu_check.Check(str(tmp_path / 'out'), sys.executable, cpu=True)
    check.step_install()
    record = check.records[-1]
    assert record['status'] == 'failed'
    assert record['note'].startswith(
        'the OpenMMLab stack does not work here (missing modules: absent_module_for_the_test ('
    )
    assert 'no --wheels folder was given' in record['note']
    log = (tmp_path / 'out' / 'logs' / 'install.log').read_text()
    assert 'ops verified on cpu' in log and 'absent_module_for_the_test: imported at' in log
