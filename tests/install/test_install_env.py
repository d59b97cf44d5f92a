"""tools/install/install_env.sh and its mmcv build decision (tools/install/mmcv_build_plan.py,
probed and checked by tools/install/cuda_build_env.py), on faked
machines: CPU torch, CUDA 12 / 13 torch with a missing / mismatched / matching nvcc (provisioned
from the package index when missing), GPUs or none, cores and memory; the CUDA_HOME assembled
from pip packages (a faked package tree) and the mmcv sdist patch. No GPU and no download is
needed; the shell script runs against a stand-in for the venv's python."""

import dataclasses
import importlib.util
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import tarfile

import pytest
import torch
from helpers import REPO_ROOT

INSTALL_TOOLS = osp.join(REPO_ROOT, 'tools', 'install')
SCRIPT = osp.join(INSTALL_TOOLS, 'install_env.sh')
PATCH = osp.join(INSTALL_TOOLS, 'mmcv-2.1.0-cxx-std.patch')
# The mmcv 2.1.0 sdist (not in the repo): MMCV_SDIST, else the copy on the machines of this project.
SDIST = os.environ.get('MMCV_SDIST', '/work/shared/gpu-wheels/mmcv-2.1.0.tar.gz')


def load_module(name):
    """A module of tools/install/ under its own name, so that cuda_build_env.py's import of
    mmcv_build_plan finds the one loaded here (one BuildCheckError for both)."""
    spec = importlib.util.spec_from_file_location(name, osp.join(INSTALL_TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


planner = load_module('mmcv_build_plan')
cbe = load_module('cuda_build_env')

NVCC_12_8 = (
    'nvcc: NVIDIA (R) Cuda compiler driver\n'
    'Cuda compilation tools, release 12.8, V12.8.93\n'
    'Build cuda_12.8.r12.8/compiler.35583870_0\n'
)
NVCC_13_0 = NVCC_12_8.replace('12.8', '13.0').replace('V12.8.93', 'V13.0.48')
NVCC_12_4 = NVCC_12_8.replace('12.8', '12.4')
ARCHES_12_8 = '\n'.join(
    f'compute_{a}'
    for a in (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, '90a', 100, 120)
)
ARCHES_12_4 = '\n'.join(f'compute_{a}' for a in (50, 60, 70, 75, 80, 86, 89, 90, '90a'))
ARCHES_13_0 = '\n'.join(
    f'compute_{a}' for a in (75, 80, 86, 87, 88, 89, 90, '90a', 100, 103, 110, 120, 121)
)
# torch 2.14.1's Requires-Dist on Linux (the CUDA packages part; 2.13.0 names the same toolkit).
TORCH_REQUIRES = (
    'filelock',
    'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]'
    '==13.0.3; platform_system == "Linux"',
    'nvidia-cudnn-cu13==9.24.0.43; platform_system == "Linux"',
    'nvidia-nccl-cu13==2.30.7; platform_system == "Linux"',
)
H100 = planner.Gpu('NVIDIA H100 80GB HBM3', (9, 0))
A100 = planner.Gpu('NVIDIA A100-SXM4-80GB', (8, 0))
RTX5090 = planner.Gpu('NVIDIA GeForce RTX 5090', (12, 0))


def machine(**kw):
    base = dict(
        torch_version='2.11.0+cu128',
        torch_cuda='12.8',
        gpus=(H100,),
        nvcc='/usr/local/cuda/bin/nvcc',
        nvcc_version=NVCC_12_8,
        nvcc_arches=ARCHES_12_8,
        cpus=16,
        mem_gib=120.0,
    )
    base.update(kw)
    return planner.Machine(**base)


# ----------------------------------------------------------------------------- the decision
@pytest.mark.parametrize('gpus', [(), (H100,)])
def test_cpu_torch_keeps_cpu_path(gpus):
    # No nvcc and user variables set: none of it matters, nothing but the mode is exported.
    m = machine(
        torch_version='2.13.0+cpu',
        torch_cuda=None,
        gpus=gpus,
        nvcc=None,
        nvcc_version=None,
        nvcc_arches=None,
    )
    plan = planner.plan_build(m, {'TORCH_CUDA_ARCH_LIST': '8.0', 'MAX_JOBS': '7'})
    assert plan.mode == 'cpu'
    assert plan.shell() == 'export MMDSNET_MMCV_BUILD=cpu\nexport MMCV_CXX_STD=c++20\n'
    assert 'no CUDA' in plan.notes[0]


def test_cuda_torch_without_visible_gpu_builds_cpu_ops():
    plan = planner.plan_build(machine(gpus=(), nvcc=None, nvcc_version=None), {})
    assert plan.exports == {'MMDSNET_MMCV_BUILD': 'cpu', 'MMCV_CXX_STD': 'c++17'}
    assert 'sees no GPU' in plan.notes[0] and 'FORCE_CUDA=1' in plan.notes[0]


@pytest.mark.parametrize(
    'torch_cuda,nvcc_version,arches,expected',
    [
        ('12.8', NVCC_12_8, ARCHES_12_8, '7.0;7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX'),
        ('12.4', NVCC_12_4, ARCHES_12_4, '7.0;7.5;8.0;8.6;8.9;9.0+PTX'),
        ('13.0', NVCC_13_0, ARCHES_13_0, '7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX'),
    ],
)
def test_force_cuda_without_gpu_builds_the_default_arches(
    torch_cuda, nvcc_version, arches, expected
):
    m = machine(gpus=(), torch_cuda=torch_cuda, nvcc_version=nvcc_version, nvcc_arches=arches)
    plan = planner.plan_build(m, {'FORCE_CUDA': '1'})
    assert plan.mode == 'cuda' and plan.exports['TORCH_CUDA_ARCH_LIST'] == expected
    assert f'TORCH_CUDA_ARCH_LIST={expected} (no GPU is visible' in plan.notes[0]
    # Every default target is one that nvcc of that CUDA version lists.
    assert set(planner.numeric_arches(expected)) <= planner.parse_nvcc_arches(arches)
    if torch_cuda.startswith('13'):
        assert '7.0' not in expected  # CUDA 13 dropped sm_50 to sm_70
    # A list of the user's is built instead, and said to be theirs.
    plan = planner.plan_build(m, {'FORCE_CUDA': '1', 'TORCH_CUDA_ARCH_LIST': '9.0'})
    assert plan.exports['TORCH_CUDA_ARCH_LIST'] == '9.0'
    assert 'TORCH_CUDA_ARCH_LIST=9.0 (yours)' in plan.notes[0]


#: A machine without a GPU or nvcc (the torch varies).
NO_GPU = dict(gpus=(), nvcc=None, nvcc_version=None, nvcc_arches=None)


def cpu_machine():
    """torch 2.13.0+cpu, no GPU, no nvcc: the older CPU-torch route (CI's machine before the
    pin moved to 2.14.1)."""
    return machine(torch_version='2.13.0+cpu', torch_cuda=None, **NO_GPU)


def cuda13_machine(**kw):
    """torch 2.14.1 (CUDA 13.0) from the package index, no GPU, no nvcc: the machine of this
    project's CI (and of every CPU user of the pin)."""
    base = dict(torch_version='2.14.1', torch_cuda='13.0', torch_requires=TORCH_REQUIRES, **NO_GPU)
    base.update(kw)
    return machine(**base)


@pytest.mark.parametrize('nvcc', [None, '/opt/cuda/bin/nvcc'])
def test_missing_nvcc_is_provisioned_from_the_package_index(nvcc):
    # nvcc absent, or present but failing to run (no version output).
    plan = planner.plan_build(cuda13_machine(nvcc=nvcc, gpus=(H100,)), {})
    assert plan.mode == 'provision'
    assert plan.exports == {
        'MMDSNET_MMCV_BUILD': 'provision',
        'MMDSNET_CUDA_PACKAGES': 'cuda-toolkit[nvcc,cccl,cudart,crt,nvvm,cublas,cusparse,'
        'cusolver,curand,cufft]==13.0.3',
    }
    assert 'built with CUDA 13.0' in plan.notes[0] and (nvcc or 'on PATH') in plan.notes[0]


@pytest.mark.parametrize('nvcc', [None, '/opt/cuda/bin/nvcc'])
def test_missing_nvcc_of_cuda12_cannot_be_provisioned(nvcc):
    # The index's nvidia-cuda-nvcc-cu12 has no nvcc driver: say so, and what to install.
    with pytest.raises(planner.BuildCheckError) as err:
        planner.plan_build(machine(nvcc=nvcc, nvcc_version=None, nvcc_arches=None), {})
    msg = str(err.value)
    assert 'torch 2.11.0+cu128 was built with CUDA 12.8' in msg and (nvcc or 'on PATH') in msg
    assert 'the package index has no nvcc for CUDA 12.x' in msg and 'ptxas' in msg
    assert 'cuda-toolkit-12-8' in msg and 'CUDA_HOME' in msg and 'built for CUDA 13' in msg


@pytest.mark.parametrize('nvcc', [None, '/opt/cuda/bin/nvcc'])
def test_missing_nvcc_without_provisioning_names_what_to_install(nvcc):
    with pytest.raises(planner.BuildCheckError) as err:
        planner.plan_build(
            machine(nvcc=nvcc, nvcc_version=None, nvcc_arches=None),
            {'MMDSNET_PROVISION_CUDA': '0'},
        )
    msg = str(err.value)
    assert 'torch 2.11.0+cu128 was built with CUDA 12.8' in msg
    assert 'nvcc of CUDA 12.x' in msg and 'cuda-toolkit-12-8' in msg and 'CUDA_HOME' in msg
    assert 'MMDSNET_PROVISION_CUDA=0' in msg and (nvcc or 'on PATH') in msg


def test_cuda13_torch_without_nvcc_provisions_the_toolkit_torch_pins():
    m = cuda13_machine()
    plan = planner.plan_build(m, {'FORCE_CUDA': '1', 'TORCH_CUDA_ARCH_LIST': '9.0'})
    assert plan.mode == 'provision'
    assert plan.exports['MMDSNET_CUDA_PACKAGES'] == (
        'cuda-toolkit[nvcc,cccl,cudart,crt,nvvm,cublas,cusparse,cusolver,curand,cufft]==13.0.3'
    )
    # Without FORCE_CUDA and without a GPU nothing is provisioned: CPU ops.
    assert planner.plan_build(m, {}).mode == 'cpu'


def test_nvcc_of_another_major_is_replaced_or_named():
    # torch CUDA 13.0, system nvcc 12.8: nvcc 13.0 is provisioned; the note names both.
    m = cuda13_machine(nvcc='/usr/local/cuda/bin/nvcc', nvcc_version=NVCC_12_8)
    plan = planner.plan_build(m, {'FORCE_CUDA': '1'})
    assert plan.mode == 'provision'
    assert 'nvcc /usr/local/cuda/bin/nvcc is CUDA 12.8' in plan.notes[0]
    assert '(13 vs 12)' in plan.notes[0]
    # torch CUDA 12.8, system nvcc 13.0: nothing to provision; both versions and the fix named.
    for env in ({}, {'MMDSNET_PROVISION_CUDA': '0'}):
        with pytest.raises(planner.BuildCheckError) as err:
            planner.plan_build(machine(nvcc_version=NVCC_13_0), env)
        msg = str(err.value)
        assert 'nvcc /usr/local/cuda/bin/nvcc is CUDA 13.0' in msg
        assert 'built with CUDA 12.8' in msg and '(12 vs 13)' in msg
        assert 'cuda-toolkit-12-8' in msg


def test_matching_system_nvcc_is_preferred_to_provisioning():
    m = cuda13_machine(gpus=(H100,), nvcc='/usr/local/cuda/bin/nvcc', nvcc_version=NVCC_12_8)
    assert planner.plan_build(m, {}).mode == 'provision'
    m = dataclasses.replace(m, nvcc_version=NVCC_13_0, nvcc_arches=ARCHES_13_0)
    plan = planner.plan_build(m, {})
    assert plan.mode == 'cuda' and plan.exports['MMDSNET_NVCC'] == '/usr/local/cuda/bin/nvcc'
    assert plan.exports['MMCV_CXX_STD'] == 'c++20'


@pytest.mark.parametrize(
    'requires,expected',
    [
        (TORCH_REQUIRES, '==13.0.3'),
        (('cuda-toolkit[cudart] == 13.2.1; platform_system == "Linux"',), '==13.2.1'),
        ((), '==13.1.*'),  # torch names single packages: the toolkit of its CUDA minor
    ],
)
def test_cuda13_packages_follow_torch(requires, expected):
    (spec,) = planner.cuda_packages('13.1', requires)
    assert spec.startswith('cuda-toolkit[nvcc,cccl,') and spec.endswith(']' + expected)


@pytest.mark.parametrize('torch_cuda', ['11.8', '12.1', '12.9'])
def test_no_packages_before_cuda_13(torch_cuda):
    with pytest.raises(planner.BuildCheckError, match=f'no nvcc for CUDA {torch_cuda[:2]}.x'):
        planner.cuda_packages(torch_cuda)


@pytest.mark.parametrize(
    'version,std',
    [
        ('2.1.0', 'c++17'),
        ('2.12.1+cu128', 'c++17'),
        ('2.13.0', 'c++20'),
        ('2.13.0+cpu', 'c++20'),
        ('2.14.1', 'c++20'),
        ('2.15.0.dev20261101', 'c++20'),
        ('3.0.0', 'c++20'),
    ],
)
def test_cxx_std_by_torch_version(version, std):
    assert planner.cxx_std(version) == std
    plan = planner.plan_build(machine(torch_version=version), {})
    assert plan.exports['MMCV_CXX_STD'] == std and f'{std},' in plan.notes[0]


def test_cxx_std_unreadable_version():
    with pytest.raises(planner.BuildCheckError, match='expected e.g. 2.13.0'):
        planner.cxx_std('unknown')


def test_nvcc_minor_mismatch_is_accepted_with_a_note():
    plan = planner.plan_build(machine(nvcc_version=NVCC_12_4, nvcc_arches=ARCHES_12_4), {})
    assert plan.mode == 'cuda'
    assert any('nvcc is CUDA 12.4, torch was built with 12.8' in n for n in plan.notes)


def test_unreadable_nvcc_version_is_an_error():
    with pytest.raises(planner.BuildCheckError, match='cannot read the CUDA release'):
        planner.plan_build(machine(nvcc_version='nvcc: something else\n'), {})


def test_matching_nvcc_exports_the_build_variables():
    plan = planner.plan_build(machine(), {})
    assert plan.mode == 'cuda'
    assert plan.exports == {
        'MMDSNET_MMCV_BUILD': 'cuda',
        'MMDSNET_NVCC': '/usr/local/cuda/bin/nvcc',
        'FORCE_CUDA': '1',
        'MMCV_WITH_OPS': '1',
        'MMCV_CXX_STD': 'c++17',
        'TORCH_CUDA_ARCH_LIST': '9.0',
        'MAX_JOBS': '16',
    }
    assert 'GPUs: NVIDIA H100 80GB HBM3 (9.0)' in plan.notes[0]


@pytest.mark.parametrize(
    'gpus,expected',
    [
        ((H100,), '9.0'),
        ((H100, H100, A100), '8.0;9.0'),
        ((RTX5090, H100), '9.0;12.0'),  # numeric order, not string order
    ],
)
def test_arch_list_from_visible_gpus(gpus, expected):
    plan = planner.plan_build(machine(gpus=gpus), {})
    assert plan.exports['TORCH_CUDA_ARCH_LIST'] == expected


@pytest.mark.integration
def test_shell_exports_quote_the_arch_list():
    plan = planner.plan_build(machine(gpus=(H100, A100)), {})
    out = subprocess.run(
        ['bash', '-c', plan.shell() + 'echo "$TORCH_CUDA_ARCH_LIST|$MAX_JOBS"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == '8.0;9.0|16\n'


@pytest.mark.parametrize('user', ['8.0;9.0+PTX', '9.0', 'Hopper'])
def test_user_arch_list_is_kept(user):
    plan = planner.plan_build(machine(gpus=(A100,)), {'TORCH_CUDA_ARCH_LIST': user})
    assert plan.exports['TORCH_CUDA_ARCH_LIST'] == user
    warned = any('has no kernels for the visible GPU capability 8.0' in n for n in plan.notes)
    assert warned == (user != '8.0;9.0+PTX')


def test_gpu_newer_than_nvcc_is_refused_before_the_build():
    with pytest.raises(planner.BuildCheckError) as err:
        planner.plan_build(
            machine(gpus=(RTX5090,), nvcc_version=NVCC_12_4, nvcc_arches=ARCHES_12_4), {}
        )
    msg = str(err.value)
    assert 'cannot compile for compute capability 12.0' in msg and 'targets 5.0 to 9.0a' in msg
    # The same check covers a user-set list.
    with pytest.raises(planner.BuildCheckError, match='compute capability 10.0'):
        planner.plan_build(
            machine(nvcc_version=NVCC_12_4, nvcc_arches=ARCHES_12_4),
            {'TORCH_CUDA_ARCH_LIST': '9.0;10.0'},
        )


@pytest.mark.parametrize(
    'cpus,mem,expected',
    [
        (16, 120.0, 16),  # the GPU machine: cores bound
        (64, 40.0, 16),  # memory bound: 40 GiB / 2.5
        (2, 23.0, 2),  # this CI machine
        (8, 1.0, 1),  # never below one job
    ],
)
def test_max_jobs_from_cores_and_memory(cpus, mem, expected):
    plan = planner.plan_build(machine(cpus=cpus, mem_gib=mem), {})
    assert plan.exports['MAX_JOBS'] == str(expected)
    assert f'from {cpus} cores' in ' '.join(plan.notes)


def test_user_max_jobs_is_kept_and_checked():
    plan = planner.plan_build(machine(), {'MAX_JOBS': '3'})
    assert plan.exports['MAX_JOBS'] == '3' and 'MAX_JOBS=3 (yours, kept)' in plan.notes
    for bad in ('0', 'four', '-1'):
        with pytest.raises(planner.BuildCheckError, match='not a positive integer'):
            planner.plan_build(machine(), {'MAX_JOBS': bad})


def test_parsers():
    assert planner.parse_nvcc_version(NVCC_13_0) == (13, 0)
    assert planner.parse_nvcc_arches('compute_75\ncompute_90\ncompute_90a\ncompute_120\n') == {
        '7.5',
        '9.0',
        '9.0a',
        '12.0',
    }
    assert planner.numeric_arches('8.0; 9.0+PTX 12.0a Hopper') == ['8.0', '9.0', '12.0a']
    with pytest.raises(planner.BuildCheckError, match='expected e.g. 12.8'):
        planner.version_major_minor('twelve')


def test_machine_from_json_round_trip_and_unknown_fields():
    m = machine(gpus=(H100, A100))
    data = dataclasses.asdict(m)
    data['gpus'] = [{'name': g.name, 'capability': list(g.capability)} for g in m.gpus]
    assert planner.Machine.from_json(json.dumps(data)) == m
    with pytest.raises(planner.BuildCheckError, match="unknown machine fields \\['gpu'\\]"):
        planner.Machine.from_json('{"torch_version": "2.11", "torch_cuda": null, "gpu": []}')


# ----------------------------------------------------------------------------- probing, faked
def fake_nvcc(tmp_path, version=NVCC_12_8, arches=ARCHES_12_8, compile_rc=0, compile_msg=''):
    """An executable that answers like nvcc and records the arguments of compile calls."""
    home = tmp_path / 'cuda'
    (home / 'bin').mkdir(parents=True)
    nvcc = home / 'bin' / 'nvcc'
    log = tmp_path / 'nvcc.log'
    nvcc.write_text(f"""#!/usr/bin/env bash
case "$1" in
  --version) printf '%b' {json.dumps(version)} ;;
  --list-gpu-arch) printf '%b\\n' {json.dumps(arches)} ;;
  *) echo "$@" >> {log}; echo {json.dumps(compile_msg)} >&2; exit {compile_rc} ;;
esac
""")
    nvcc.chmod(0o755)
    return str(nvcc), log


@pytest.mark.integration
def test_run_nvcc_reads_a_real_executable(tmp_path):
    nvcc, _ = fake_nvcc(tmp_path)
    assert planner.parse_nvcc_version(cbe.run_nvcc(nvcc, '--version')) == (12, 8)
    assert '9.0a' in planner.parse_nvcc_arches(cbe.run_nvcc(nvcc, '--list-gpu-arch'))
    assert cbe.run_nvcc(str(tmp_path / 'missing'), '--version') is None


@pytest.mark.integration
def test_smoke_compile_uses_torch_flags_and_reports_nvcc_errors(tmp_path):
    nvcc, log = fake_nvcc(tmp_path)
    cbe.smoke_compile(nvcc, '8.0;9.0+PTX', cc='/usr/bin/gcc-12', std='c++20')
    args = log.read_text()
    assert '-std=c++20' in args and '-ccbin /usr/bin/gcc-12' in args
    assert '-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90' in args

    bad, _ = fake_nvcc(
        tmp_path / 'bad',
        compile_rc=1,
        compile_msg='error: -- unsupported GNU version! gcc versions later than 13',
    )
    with pytest.raises(planner.BuildCheckError) as err:
        cbe.smoke_compile(bad, '9.0')
    assert 'unsupported GNU version' in str(err.value) and 'set CC' in str(err.value)


@pytest.mark.integration
def test_probe_this_cpu_machine():
    m = cbe.probe()
    assert m.torch_version == torch.__version__ and m.torch_cuda == torch.version.cuda
    assert 1 <= m.cpus <= (os.cpu_count() or 1) and m.mem_gib > 0
    if torch.version.cuda is None:
        assert m.nvcc is None and m.gpus == ()


@pytest.mark.integration
def test_probe_with_faked_cuda_torch_and_gpu(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    nvcc, _ = fake_nvcc(tmp_path)
    monkeypatch.setattr(torch.version, 'cuda', '12.8')
    monkeypatch.setattr(cpp_extension, 'CUDA_HOME', str(tmp_path / 'cuda'))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda i: f'GPU{i}')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda i: (9, 0) if i else (8, 6))
    m = cbe.probe()
    assert m.nvcc == nvcc and m.gpus == (planner.Gpu('GPU0', (8, 6)), planner.Gpu('GPU1', (9, 0)))
    plan = planner.plan_build(m, {})
    assert plan.exports['TORCH_CUDA_ARCH_LIST'] == '8.6;9.0'

    # CUDA_HOME without bin/nvcc: torch would fail, so nvcc counts as missing.
    monkeypatch.setattr(cpp_extension, 'CUDA_HOME', str(tmp_path))
    with pytest.raises(planner.BuildCheckError, match='no working nvcc was found on PATH'):
        planner.plan_build(cbe.probe(), {})


# ------------------------------------------------------------------------- provisioned CUDA_HOME
def fake_tree(root, files):
    """Files (relative paths) under ``root``, each holding its own path."""
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    return str(root)


def test_assemble_cuda_home_from_the_cuda13_package_tree(tmp_path):
    nvidia = tmp_path / 'site-packages' / 'nvidia'
    fake_tree(
        nvidia / 'cu13',
        [
            'bin/nvcc',
            'bin/nvcc.profile',
            'bin/crt/link.stub',
            'include/cuda_runtime.h',
            'include/cccl/cuda/std/version',
            'lib/libcudart.so.13',
            'lib/libcublas.so.13',
            'lib/libnvrtc-builtins.so.13.0',
            'nvvm/bin/cicc',
        ],
    )
    fake_tree(nvidia / 'cudnn', ['include/cudnn.h', 'lib/libcudnn.so.9'])
    fake_tree(nvidia / 'no_tree', ['__init__.py'])  # no bin/include/lib/nvvm: not a root
    roots = cbe.cuda_package_roots(str(tmp_path / 'site-packages'))
    assert roots == [str(nvidia / 'cu13'), str(nvidia / 'cudnn')]
    home = tmp_path / 'venv' / 'cuda'
    assert cbe.assemble_cuda_home(roots, str(home)) == str(home / 'bin' / 'nvcc')
    # bin and lib64 are real folders of links into the packages (nvcc finds ../lib64, ../nvvm
    # from the path it was called by).
    for folder in ('bin', 'bin/crt', 'include', 'lib64', 'nvvm/bin'):
        assert (home / folder).is_dir() and not (home / folder).is_symlink()
    assert os.readlink(home / 'bin' / 'nvcc') == str(nvidia / 'cu13' / 'bin' / 'nvcc')
    assert (home / 'include' / 'cccl' / 'cuda' / 'std' / 'version').read_text().endswith('version')
    assert (home / 'include' / 'cudnn.h').is_file()
    assert os.readlink(home / 'lib64' / 'libcudart.so') == 'libcudart.so.13'
    assert os.readlink(home / 'lib64' / 'libcublas.so') == 'libcublas.so.13'
    assert os.readlink(home / 'lib64' / 'libcudnn.so') == 'libcudnn.so.9'
    assert not (home / 'lib64' / 'libnvrtc-builtins.so').exists()  # only .so.N gets a dev link
    assert os.readlink(home / 'lib') == 'lib64'
    assert (home / 'lib' / 'libcudart.so.13').read_text() == 'lib/libcudart.so.13'
    # Again: rebuilt, not merged into the old tree.
    (nvidia / 'cu13' / 'bin' / 'nvcc.profile').unlink()
    cbe.assemble_cuda_home(roots, str(home))
    assert not os.path.lexists(home / 'bin' / 'nvcc.profile')


def test_assemble_cuda_home_from_cuda12_packages_first_root_wins(tmp_path):
    nvidia = tmp_path / 'nvidia'
    roots = [
        fake_tree(
            nvidia / 'cuda_nvcc', ['bin/nvcc', 'include/crt/host_defines.h', 'nvvm/bin/cicc']
        ),
        fake_tree(nvidia / 'cuda_runtime', ['include/cuda_runtime.h', 'lib/libcudart.so.12']),
        fake_tree(nvidia / 'cublas', ['include/cublas_v2.h', 'include/cuda_runtime.h']),
    ]
    home = tmp_path / 'cuda'
    cbe.assemble_cuda_home(roots, str(home))
    assert sorted(os.listdir(home / 'include')) == ['crt', 'cublas_v2.h', 'cuda_runtime.h']
    assert (home / 'include' / 'cuda_runtime.h').read_text() == 'include/cuda_runtime.h'
    assert os.readlink(home / 'include' / 'cuda_runtime.h').startswith(str(roots[1]))
    assert os.readlink(home / 'lib64' / 'libcudart.so') == 'libcudart.so.12'


def test_assemble_cuda_home_without_nvcc_says_what_to_install(tmp_path):
    root = fake_tree(tmp_path / 'nvidia' / 'cuda_runtime', ['include/cuda_runtime.h'])
    with pytest.raises(planner.BuildCheckError, match='no bin/nvcc in the NVIDIA packages at'):
        cbe.assemble_cuda_home([root], str(tmp_path / 'cuda'))
    with pytest.raises(planner.BuildCheckError, match='MMDSNET_CUDA_PACKAGES'):
        cbe.assemble_cuda_home(cbe.cuda_package_roots(str(tmp_path / 'none')), str(tmp_path / 'c'))


# ----------------------------------------------------------------------------- the mmcv patch
def patch_preimage(patch_text):
    """The lines each hunk of a unified diff expects (context and removed lines), in order: a
    file that the patch applies to, without mmcv's sources in this repo."""
    lines = []
    for line in patch_text.splitlines()[patch_text.splitlines().index('--- a/setup.py') + 2 :]:
        if line.startswith('@@'):
            lines += ['# gap'] * 5
        elif line[:1] in (' ', '-'):
            lines.append(line[1:])
    return '\n'.join(lines) + '\n'


def apply_patch(folder):
    return subprocess.run(
        ['patch', '-d', str(folder), '-p1', '--forward', '-i', PATCH],
        capture_output=True,
        text=True,
    )


def check_patched_setup(text):
    """mmcv's setup.py after the patch: the standard of gcc and nvcc comes from MMCV_CXX_STD."""
    assert "cxx_std = os.getenv('MMCV_CXX_STD', 'c++17')" in text
    assert "extra_compile_args['cxx'] = ['-std=' + cxx_std]" in text
    assert "extra_compile_args['nvcc'] += ['-std=' + cxx_std]" in text
    assert "'-std=c++17']" not in text.replace("['-Wall', '-std=c++17']", '')  # MPS branch kept


@pytest.mark.integration
def test_patch_applies_to_its_preimage(tmp_path):
    (tmp_path / 'setup.py').write_text(patch_preimage(open(PATCH).read()))
    proc = apply_patch(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_patched_setup((tmp_path / 'setup.py').read_text())
    assert apply_patch(tmp_path).returncode != 0  # --forward: a second time is refused


@pytest.mark.skipif(not osp.isfile(SDIST), reason=f'no mmcv-2.1.0.tar.gz at {SDIST} (MMCV_SDIST)')
@pytest.mark.integration
def test_patch_applies_cleanly_to_the_mmcv_sdist(tmp_path):
    with tarfile.open(SDIST) as tar:
        tar.extract('mmcv-2.1.0/setup.py', tmp_path, filter='data')
    proc = apply_patch(tmp_path / 'mmcv-2.1.0')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'offset' not in proc.stdout and 'fuzz' not in proc.stdout  # cleanly: exact lines
    text = (tmp_path / 'mmcv-2.1.0' / 'setup.py').read_text()
    check_patched_setup(text)
    compile(text, 'setup.py', 'exec')


# ----------------------------------------------------------------------------- the script's CLI
def write_machine(tmp_path, m):
    data = dataclasses.asdict(m)
    data['gpus'] = [{'name': g.name, 'capability': list(g.capability)} for g in m.gpus]
    path = tmp_path / 'machine.json'
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.integration
def test_main_prints_exports_or_exits_2(tmp_path, monkeypatch, capsys):
    for var in ('TORCH_CUDA_ARCH_LIST', 'MAX_JOBS', 'FORCE_CUDA', 'CC', 'MMDSNET_PROVISION_CUDA'):
        monkeypatch.delenv(var, raising=False)
    nvcc, log = fake_nvcc(tmp_path)
    assert cbe.main(['--machine', write_machine(tmp_path, machine(nvcc=nvcc))]) == 0
    out, err = capsys.readouterr()
    assert 'export TORCH_CUDA_ARCH_LIST=9.0\n' in out and 'export MAX_JOBS=16\n' in out
    assert '[install] CUDA build: torch 2.11.0+cu128' in err
    assert 'compute_90' in log.read_text()  # the smoke compile ran

    monkeypatch.setenv('MAX_JOBS', '4')
    assert cbe.main(['--machine', write_machine(tmp_path, machine(nvcc=nvcc))]) == 0
    assert 'export MAX_JOBS=4\n' in capsys.readouterr().out

    path = write_machine(tmp_path, cuda13_machine(nvcc=nvcc, nvcc_version=NVCC_12_8))
    monkeypatch.setenv('FORCE_CUDA', '1')
    assert cbe.main(['--machine', path]) == 0
    out, err = capsys.readouterr()
    assert out.startswith('export MMDSNET_MMCV_BUILD=provision\n')
    assert "export MMDSNET_CUDA_PACKAGES='cuda-toolkit[nvcc,cccl," in out
    assert '[install] torch 2.14.1 was built with CUDA 13.0' in err
    monkeypatch.setenv('MMDSNET_PROVISION_CUDA', '0')
    assert cbe.main(['--machine', path]) == 2
    out, err = capsys.readouterr()
    assert out == '' and err.startswith('[install] error: torch 2.14.1 was built with CUDA 13.0')
    assert f'nvcc {nvcc} is CUDA 12.8' in err


def test_verify_ops_on_cpu_and_version_check(capsys):
    import mmcv

    assert cbe.main(['--verify-ops', 'cpu', '--expect-mmcv', mmcv.__version__]) == 0
    assert 'nms (' in capsys.readouterr().out
    with pytest.raises(planner.BuildCheckError, match='9.9.9 expected'):
        cbe.verify_ops('cpu', expect_mmcv='9.9.9')


def test_verify_ops_refuses_mmcv_without_cuda_ops():
    from mmcv.ops import get_compiling_cuda_version

    if get_compiling_cuda_version() != 'not available':
        pytest.skip('this mmcv has CUDA ops')
    with pytest.raises(planner.BuildCheckError, match='built without its CUDA ops'):
        cbe.verify_ops('cuda')


# ----------------------------------------------------------------------------- install_env.sh
STUB_PYTHON = r"""#!/usr/bin/env bash
# Stand-in for the venv's python: logs every call with the mmcv build variables. pip calls only
# record what would be installed (-r and -c files with their contents), failing for a
# requirements file naming $STUB_PIP_FAIL; `pip download` hands out $STUB_SDIST, and installing
# the unpacked sdist leaves a marker holding the FORCE_CUDA it was built with, if the patch was
# applied (a wheel holding "ok" leaves it too). `-c` code that reads importlib.metadata answers
# $STUB_PROBE (python tag, torch and torchvision versions). tools/install/cuda_build_env.py
# decides for real, for the machine in $STUB_MACHINE ($STUB_MACHINE_AFTER once
# --assemble-cuda-home has run).
log="$STUB_DIR/log"
echo "CALL $* || FORCE_CUDA=${FORCE_CUDA-} ARCH=${TORCH_CUDA_ARCH_LIST-} MAX_JOBS=${MAX_JOBS-}" \
  "STD=${MMCV_CXX_STD-} CUDA_HOME=${CUDA_HOME-}" >> "$log"
case "$1" in
  -m)
    shift 3  # -m pip --disable-pip-version-check
    prev=""
    for a in "$@"; do
      if [[ "$prev" == -r ]]; then
        echo "REQ $a: $(tr '\n' ' ' < "$a")" >> "$log"
        if [[ -n "${STUB_PIP_FAIL-}" ]] && grep -q "^$STUB_PIP_FAIL" "$a"; then
          echo "ERROR: No matching distribution found for $STUB_PIP_FAIL" >&2; exit 1
        fi
      fi
      [[ "$prev" == -c ]] && echo "CON $a: $(tr '\n' ' ' < "$a")" >> "$log"
      # a prebuilt mmcv wheel: its ops load if the fake wheel says "ok"
      [[ "$1" == install && "$a" == *.whl ]] && grep -qx ok "$a" && echo 0 > "$STUB_DIR/mmcv"
      [[ "$1" == download && "$prev" == -d ]] && cp "$STUB_SDIST" "$a/mmcv-2.1.0.tar.gz"
      if [[ "$1" == install && "$a" == */mmcv-2.1.0 ]]; then
        grep -q MMCV_CXX_STD "$a/setup.py" || { echo "stub: unpatched sdist" >&2; exit 98; }
        echo "${FORCE_CUDA:-0}" > "$STUB_DIR/mmcv"
      fi
      prev="$a"
    done
    [[ "$1" == uninstall ]] && rm -f "$STUB_DIR/mmcv"
    exit 0 ;;
  -) cat > /dev/null; [[ -f "$STUB_DIR/mmcv" ]] ;;
  -c)  # install_env.sh's probe_python, else mmcv_ops_ok
    if [[ "$2" == *importlib.metadata* ]]; then echo "$STUB_PROBE"
    else [[ -f "$STUB_DIR/mmcv" ]]; fi ;;
  tools/install/cuda_build_env.py)
    if [[ "${2-}" == --verify-ops ]]; then
      [[ "$(cat "$STUB_DIR/mmcv" 2>/dev/null)" == 1 ]] && echo "[install] stub: CUDA ops verified"
    elif [[ "${2-}" == --assemble-cuda-home ]]; then
      touch "$STUB_DIR/provisioned"; echo "$3"
    elif [[ -f "$STUB_DIR/provisioned" && -n "${STUB_MACHINE_AFTER-}" ]]; then
      exec "$REAL_PYTHON" "$@" --machine "$STUB_MACHINE_AFTER"
    else
      exec "$REAL_PYTHON" "$@" --machine "$STUB_MACHINE"
    fi ;;
  *) echo "stub python: unexpected call $*" >&2; exit 99 ;;
esac
"""


def default_sigint():
    """Restore SIGINT's default action in a child before it execs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class FakeVenv:
    """A .venv whose python is STUB_PYTHON, and a way to run install_env.sh against it."""

    def __init__(self, tmp_path, m, system_site=False, mmcv=None, torchvision=None):
        self.dir = tmp_path
        venv = tmp_path / 'venv'
        (venv / 'bin').mkdir(parents=True)
        py = venv / 'bin' / 'python'
        py.write_text(STUB_PYTHON)
        py.chmod(0o755)
        (venv / 'pyvenv.cfg').write_text(
            f'include-system-site-packages = {"true" if system_site else "false"}\n'
        )
        if mmcv is not None:  # an mmcv already installed, built with FORCE_CUDA=mmcv
            (tmp_path / 'mmcv').write_text(f'{mmcv}\n')
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                'TORCH_CUDA_ARCH_LIST',
                'MAX_JOBS',
                'FORCE_CUDA',
                'CC',
                'MMCV_WHEEL_DIR',
                'USE_SYSTEM_TORCH',
                'CUDA_VISIBLE_DEVICES',
                'CUDA_HOME',
                'MMCV_CXX_STD',
                'MMDSNET_PROVISION_CUDA',
                'MMDSNET_CLASSIFICATION',
                'PIP_NO_INDEX',
                'PIP_FIND_LINKS',
            )
        }
        sdist_dir = tmp_path / 'sdist' / 'mmcv-2.1.0'
        sdist_dir.mkdir(parents=True)
        (sdist_dir / 'setup.py').write_text(patch_preimage(open(PATCH).read()))
        with tarfile.open(tmp_path / 'sdist.tar.gz', 'w:gz') as tar:
            tar.add(sdist_dir, 'mmcv-2.1.0')
        self.env.update(
            VENV=str(venv),
            STUB_DIR=str(tmp_path),
            REAL_PYTHON=sys.executable,
            STUB_MACHINE=write_machine(tmp_path, m),
            STUB_SDIST=str(tmp_path / 'sdist.tar.gz'),
            STUB_PROBE=f'cp311 {m.torch_version.split("+")[0]} {torchvision or "-"}',
        )
        self.stamp = venv / '.mmdsnet-install-stamp'

    def run(self, *args, **env):
        proc = subprocess.run(
            ['bash', SCRIPT, *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            # SIGINT as a terminal gives it: a runner that started this suite in the
            # background (SIGINT ignored, inherited) would stop the script's INT trap
            preexec_fn=default_sigint,
        )
        self.log = (self.dir / 'log').read_text() if (self.dir / 'log').exists() else ''
        return proc

    def calls(self, needle):
        return [line for line in self.log.splitlines() if needle in line]

    def builds(self):
        """The pip calls that install the unpacked (and patched) mmcv sdist."""
        return [c for c in self.calls(' install ') if '/mmcv-2.1.0 ||' in c]


@pytest.mark.integration
def test_install_env_sh_parses():
    subprocess.run(['bash', '-n', SCRIPT], check=True)


@pytest.mark.integration
def test_install_env_sh_cpu_torch_takes_the_unchanged_cpu_path(tmp_path):
    fake = FakeVenv(
        tmp_path,
        machine(
            torch_version='2.13.0+cpu',
            torch_cuda=None,
            gpus=(),
            nvcc=None,
            nvcc_version=None,
            nvcc_arches=None,
        ),
    )
    proc = fake.run()
    assert proc.returncode == 0, proc.stderr
    (download,) = fake.calls(' download ')
    assert '--no-deps --no-binary mmcv --no-build-isolation -d /' in download
    assert 'mmcv==2.1.0 ||' in download
    builds = fake.builds()
    assert len(builds) == 1
    assert builds[0].startswith(
        'CALL -m pip --disable-pip-version-check install --no-build-isolation --no-deps /'
    )
    assert builds[0].endswith('FORCE_CUDA=0 ARCH= MAX_JOBS=2 STD=c++20 CUDA_HOME=')
    assert 'building mmcv 2.1.0 with -std=c++20' in proc.stdout
    assert fake.calls('-c requirements/constraints.txt -r requirements/runtime.txt')
    assert not fake.calls('--verify-ops') and not fake.calls('uninstall')
    assert 'building mmcv 2.1.0 from source with ops (MAX_JOBS=2)' in proc.stdout
    assert fake.stamp.exists()
    # A second run with the same inputs only checks the imports.
    again = fake.run()
    assert again.returncode == 0 and '[install] .venv is up to date' in again.stdout


@pytest.mark.integration
def test_install_env_sh_builds_cuda_ops_with_planned_variables(tmp_path):
    nvcc, _ = fake_nvcc(tmp_path)
    fake = FakeVenv(
        tmp_path, machine(nvcc=nvcc, gpus=(H100, A100), cpus=16, mem_gib=30.0), mmcv=0
    )  # a CPU-only mmcv is installed: it must be replaced
    proc = fake.run()
    assert proc.returncode == 0, proc.stderr
    assert '[install] CUDA build: torch 2.11.0+cu128 (CUDA 12.8), nvcc 12.8' in proc.stderr
    builds = fake.builds()
    assert len(builds) == 1
    assert builds[0].endswith('FORCE_CUDA=1 ARCH=8.0;9.0 MAX_JOBS=12 STD=c++17 CUDA_HOME=')
    log = fake.log
    assert log.index('uninstall -y mmcv') < log.index(builds[0])
    assert '[install] stub: CUDA ops verified' in proc.stdout
    assert 'mmcv build took' in proc.stdout


@pytest.mark.integration
def test_install_env_sh_keeps_working_cuda_mmcv(tmp_path):
    nvcc, _ = fake_nvcc(tmp_path)
    fake = FakeVenv(tmp_path, machine(nvcc=nvcc), mmcv=1)
    proc = fake.run(MAX_JOBS='5', TORCH_CUDA_ARCH_LIST='9.0+PTX')
    assert proc.returncode == 0, proc.stderr
    assert 'mmcv 2.1.0 with CUDA ops already installed' in proc.stdout
    assert not fake.calls(' download ') and not fake.builds() and not fake.calls('uninstall')
    assert 'MAX_JOBS=5 (yours, kept)' in proc.stderr


@pytest.mark.integration
def test_install_env_sh_stops_before_the_build_on_nvcc_mismatch(tmp_path):
    nvcc, log = fake_nvcc(tmp_path, version=NVCC_13_0)
    fake = FakeVenv(tmp_path, machine(nvcc=nvcc, nvcc_version=NVCC_13_0))
    proc = fake.run(MMDSNET_PROVISION_CUDA='0')
    assert proc.returncode == 2
    assert 'nvcc ' + nvcc + ' is CUDA 13.0 and torch refuses' in proc.stderr
    assert 'stopped before building mmcv' in proc.stderr
    assert not fake.calls(' download ') and not fake.builds() and not fake.stamp.exists()
    assert not log.exists()  # not even the smoke compile ran


@pytest.mark.integration
def test_install_env_sh_provisions_nvcc_then_builds_without_a_gpu(tmp_path):
    # torch 2.14.1 (CUDA 13.0), no GPU, no nvcc: FORCE_CUDA=1 installs the toolkit torch pins,
    # assembles .venv/cuda and plans again, finding nvcc 13.0 there.
    before = cuda13_machine()
    nvcc, nvcc_log = fake_nvcc(tmp_path, version=NVCC_13_0, arches=ARCHES_13_0)
    after = dataclasses.replace(before, nvcc=nvcc, nvcc_version=NVCC_13_0, nvcc_arches=ARCHES_13_0)
    fake = FakeVenv(tmp_path, before)
    (tmp_path / 'after').mkdir()
    proc = fake.run(FORCE_CUDA='1', STUB_MACHINE_AFTER=write_machine(tmp_path / 'after', after))
    assert proc.returncode == 0, proc.stderr
    (provision,) = fake.calls('install cuda-toolkit[')
    assert (
        'install cuda-toolkit[nvcc,cccl,cudart,crt,nvvm,cublas,cusparse,cusolver,curand,cufft]'
        '==13.0.3 ||'
    ) in provision
    venv_cuda = fake.env['VENV'] + '/cuda'
    assert fake.calls(f'--assemble-cuda-home {venv_cuda} ||')
    assert f'[install] CUDA_HOME={venv_cuda} (nvcc and headers from the package index)' in (
        proc.stdout
    )
    (build,) = fake.builds()
    assert build.endswith(
        'FORCE_CUDA=1 ARCH=7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX MAX_JOBS=16 STD=c++20 '
        f'CUDA_HOME={venv_cuda}'
    )
    assert 'TORCH_CUDA_ARCH_LIST=7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX (no GPU is visible' in (
        proc.stderr
    )
    assert '-std=c++20' in nvcc_log.read_text()  # the smoke compile ran with mmcv's standard
    assert '[install] stub: CUDA ops verified' in proc.stdout


@pytest.mark.integration
def test_install_env_sh_provisioned_nvcc_that_still_does_not_fit_stops(tmp_path):
    before = cuda13_machine()
    after = dataclasses.replace(before, nvcc='/x/nvcc', nvcc_version=NVCC_12_8)
    fake = FakeVenv(tmp_path, before)
    (tmp_path / 'after').mkdir()
    proc = fake.run(
        FORCE_CUDA='1',
        TORCH_CUDA_ARCH_LIST='9.0',
        STUB_MACHINE_AFTER=write_machine(tmp_path / 'after', after),
    )
    assert proc.returncode == 2
    assert 'MMDSNET_PROVISION_CUDA=0 forbids' in proc.stderr  # no second provisioning
    assert len(fake.calls('install cuda-toolkit[')) == 1
    assert not fake.builds() and not fake.stamp.exists()


@pytest.mark.integration
def test_install_env_sh_system_torch_drops_torch_pins(tmp_path):
    cpu = machine(
        torch_version='2.13.0+cpu',
        torch_cuda=None,
        gpus=(),
        nvcc=None,
        nvcc_version=None,
        nvcc_arches=None,
    )
    fake = FakeVenv(tmp_path, cpu, system_site=True)
    proc = fake.run(USE_SYSTEM_TORCH='1')
    assert proc.returncode == 0, proc.stderr
    reqs = [r for r in fake.calls('REQ ') if 'build.txt' not in r]
    assert len(reqs) == 2 and all('torch==' not in r for r in reqs)
    assert all(r.startswith('REQ /') for r in reqs)  # filtered copies, not requirements/*.txt
    assert any('mmdet==3.3.0' in r for r in reqs) and any('pytest' in r for r in reqs)
    assert not fake.calls('constraints.txt')
    # No torchvision beside the system torch: classification is skipped, not pulled from the
    # index (torchvision 0.29.1 would bring torch 2.14.1 over the system one).
    assert 'classification skipped: no torchvision beside the system torch 2.13.0' in proc.stdout
    assert not fake.calls('mmpretrain') and fake.stamp.exists()

    refused = FakeVenv(tmp_path / 'plain', cpu, system_site=False).run(USE_SYSTEM_TORCH='1')
    assert refused.returncode == 2 and 'without --system-site-packages' in refused.stderr


@pytest.mark.integration
@pytest.mark.parametrize('in_index', [True, False])
def test_install_env_sh_system_torch_keeps_its_torchvision_for_mmpretrain(tmp_path, in_index):
    """A GPU machine's torch and torchvision (e.g. 2.13.0+cu130 and 0.28.0) are kept: mmpretrain
    is installed pinned to them, or skipped when the index / find-links has none."""
    m = cuda13_machine(torch_version='2.13.0+cu130')
    fake = FakeVenv(tmp_path, m, system_site=True, mmcv=0, torchvision='0.28.0')
    proc = fake.run(USE_SYSTEM_TORCH='1', STUB_PIP_FAIL='' if in_index else 'mmpretrain')
    assert proc.returncode == 0, proc.stderr
    (classification,) = [r for r in fake.calls('REQ ') if 'mmpretrain' in r]
    assert classification.startswith('REQ /') and 'mmpretrain==1.2.0' in classification
    assert 'torchvision==' not in classification
    (pinned,) = fake.calls('CON ')
    assert pinned.endswith('installed.txt: torch==2.13.0 torchvision==0.28.0 ')
    skipped = 'classification skipped: mmpretrain could not be installed beside torch 2.13.0'
    assert (skipped in proc.stdout) != in_index
    assert fake.stamp.exists()


@pytest.mark.integration
def test_install_env_sh_ci_machine_installs_classification_unless_opted_out(tmp_path):
    fake = FakeVenv(tmp_path, cuda13_machine(), mmcv=0)
    pinned = '-c requirements/constraints.txt -r requirements/runtime.txt -r requirements/tests.txt'
    proc = fake.run()
    assert proc.returncode == 0, proc.stderr
    (install,) = fake.calls(pinned)
    assert install.split(' || ')[0].endswith(' -r requirements/classification.txt')
    assert any('torchvision==0.29.1 mmpretrain==1.2.0' in r for r in fake.calls('REQ '))
    # The opt-out is part of the stamp: running with it installs again, without classification.
    (tmp_path / 'log').unlink()
    proc = fake.run(MMDSNET_CLASSIFICATION='0')
    assert proc.returncode == 0, proc.stderr
    assert 'up to date' not in proc.stdout
    assert 'MMDSNET_CLASSIFICATION=0: mmpretrain and torchvision left out' in proc.stdout
    (install,) = fake.calls(pinned)
    assert 'classification' not in install
    assert not [r for r in fake.calls('REQ ') if 'mmpretrain' in r]
    assert fake.run(MMDSNET_CLASSIFICATION='0').stdout.endswith('.venv is up to date\n')

    bad = fake.run(MMDSNET_CLASSIFICATION='no')
    assert bad.returncode == 2
    assert 'MMDSNET_CLASSIFICATION=no; expected 1 (install mmpretrain' in bad.stderr


def fake_wheels(folder, wheels):
    """MMCV_WHEEL_DIR with fake mmcv wheels: relative path -> whether its ops load."""
    for rel, loads in wheels.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('ok\n' if loads else 'undefined symbol\n')
    return str(folder)


TOP = 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl'


@pytest.mark.integration
@pytest.mark.parametrize(
    'wheels,tried,kept',
    [
        # the wheel built against the installed torch first; other folders are not looked at
        (
            {f'torch-2.14.1/{TOP}': True, f'torch-2.14.0/{TOP}': True, TOP: True},
            [f'torch-2.14.1/{TOP}'],
            f'torch-2.14.1/{TOP}',
        ),
        # no folder for this torch (another version's, another Python's): the top-level wheel
        (
            {
                f'torch-2.14.0/{TOP}': True,
                f'torch-2.14.1/{TOP.replace("311", "312")}': True,
                TOP: True,
            },
            [TOP],
            TOP,
        ),
        # the matching wheel does not load: the top-level one is tried next
        ({f'torch-2.14.1/{TOP}': False, TOP: True}, [f'torch-2.14.1/{TOP}', TOP], TOP),
        # none loads: built from source
        ({f'torch-2.14.1/{TOP}': False, TOP: False}, [f'torch-2.14.1/{TOP}', TOP], None),
        ({}, [], None),
    ],
)
def test_install_env_sh_picks_the_mmcv_wheel_of_the_installed_torch(tmp_path, wheels, tried, kept):
    folder = fake_wheels(tmp_path / 'wheels', wheels)
    fake = FakeVenv(tmp_path, cuda13_machine(torch_version='2.14.1+cu130'))
    proc = fake.run(MMCV_WHEEL_DIR=folder)
    assert proc.returncode == 0, proc.stderr
    installed = [c.split(' || ')[0].rsplit(' ', 1)[1] for c in fake.calls('--force-reinstall')]
    assert installed == [f'{folder}/{rel}' for rel in tried]
    assert len(fake.calls('uninstall -y mmcv')) == len(tried) - (kept is not None)
    assert len(fake.builds()) == (kept is None)
    if kept is not None:
        assert 'building mmcv' not in proc.stdout


@pytest.mark.integration
def test_install_env_sh_mmcv_builds_only_mmcv_for_the_given_python(tmp_path):
    """make gpu-check's source build: the patched sdist for PYTHON as it is, without a venv,
    requirements, mmdsnet or stamp; no nvcc is provisioned for it."""
    fake = FakeVenv(tmp_path, cpu_machine())
    no_venv = tmp_path / 'no-venv'
    proc = fake.run('mmcv', PYTHON=fake.env['VENV'] + '/bin/python', VENV=str(no_venv))
    assert proc.returncode == 0, proc.stderr
    (build,) = fake.builds()
    assert build.endswith('FORCE_CUDA=0 ARCH= MAX_JOBS=2 STD=c++20 CUDA_HOME=')
    assert not fake.calls('REQ ') and not fake.calls(' -e .') and not fake.calls('CALL - ')
    assert not no_venv.exists() and not fake.stamp.exists()
    assert proc.stdout.rstrip().endswith('[install] mmcv 2.1.0 done')

    provision = FakeVenv(tmp_path / 'cuda', cuda13_machine())
    proc = provision.run('mmcv', FORCE_CUDA='1', PYTHON=provision.env['VENV'] + '/bin/python')
    assert proc.returncode == 2 and 'builds with an installed nvcc only' in proc.stderr
    assert not provision.calls('install cuda-toolkit[') and not provision.builds()

    usage = fake.run('everything')
    assert usage.returncode == 2 and 'usage:' in usage.stderr


@pytest.mark.integration
@pytest.mark.parametrize('fails', ['download', 'interrupted'])
def test_install_env_sh_removes_its_temp_folders_on_every_exit(tmp_path, fails):
    fake = FakeVenv(tmp_path, cpu_machine())
    temp = tmp_path / 'tmp'
    temp.mkdir()
    if fails == 'download':  # pip download hands out nothing: tar fails after mktemp
        proc = fake.run(STUB_SDIST=str(tmp_path / 'missing.tar.gz'), TMPDIR=str(temp))
        assert proc.returncode != 0
    else:  # SIGINT while pip builds the unpacked sdist
        stub = tmp_path / 'venv' / 'bin' / 'python'
        stub.write_text(
            stub.read_text().replace(
                'echo "${FORCE_CUDA:-0}" > "$STUB_DIR/mmcv"', 'kill -INT $PPID; sleep 1'
            )
        )
        proc = fake.run(TMPDIR=str(temp))
        assert proc.returncode == 130, proc.stderr
    assert fake.calls(' download ')
    assert list(temp.iterdir()) == []
