"""How tools/install_env.sh builds mmcv's compiled ops: CPU only, or CUDA.

mmcv 2.1.0 compiles its CUDA kernels when torch sees a GPU (or FORCE_CUDA=1). That build takes
minutes to an hour, so the conditions it needs are checked first: an nvcc of the CUDA major
version torch was built with, compute capabilities that nvcc can target, and a host compiler
that nvcc accepts (a one-line kernel is compiled). TORCH_CUDA_ARCH_LIST comes from the visible
GPUs (without a GPU: a default list for torch's CUDA) and MAX_JOBS from the cores and memory,
unless the user set them. When no nvcc of torch's CUDA major version is found, the plan is to
provision one: the compiler and headers of torch's CUDA version from the package index, installed
into the venv and assembled into a CUDA_HOME (``--assemble-cuda-home``).

Run as a script it prints shell ``export`` lines for install_env.sh to ``eval`` (notes go to
stderr), or says what is wrong and what to install and exits with 2. ``--verify-ops DEVICE``
runs mmcv's nms and RoIAlign (forward and backward) on DEVICE and compares them with the CPU
kernels. The decision, :func:`plan_build`, is a pure function of a :class:`Machine` and the
environment variables, so it is tested with faked machines; ``--machine FILE`` decides for a
machine described in a JSON file instead of probing this one. No mmdsnet imports: this runs
before mmdsnet is installed.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Mapping, NamedTuple

# Peak memory of one compiler process on mmcv's CUDA and C++ sources, with margin.
GIB_PER_JOB = 2.5
CPU, CUDA, PROVISION = 'cpu', 'cuda', 'provision'

# Architectures built when FORCE_CUDA=1 and no GPU is visible (and TORCH_CUDA_ARCH_LIST is
# unset), by the CUDA version torch was built with: data-centre and consumer GPUs of the last
# generations (V100 7.0, T4 / RTX 20 7.5, A100 8.0, RTX 30 / A10 8.6, L4 / L40 / RTX 40 8.9,
# H100 / H200 9.0, B200 10.0, RTX 50 12.0), the newest also as PTX for GPUs after it. CUDA 13
# dropped sm_50 to sm_70 (Maxwell, Pascal, Volta); Blackwell needs CUDA 12.8.
DEFAULT_ARCHES = (
    ((13, 0), '7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX'),
    ((12, 8), '7.0;7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX'),
    ((11, 8), '7.0;7.5;8.0;8.6;8.9;9.0+PTX'),
    ((0, 0), '7.0;7.5;8.0;8.6+PTX'),
)
# The parts of CUDA 13's `cuda-toolkit` meta-package an mmcv build needs: nvcc (with crt, nvvm
# and the runtime), CCCL (thrust, cub), and the math libraries whose headers torch's CUDA headers
# include (ATen/cuda/CUDAContextLight.h: cublas, cusparse, cusolver; curand, cufft elsewhere).
TOOLKIT_EXTRAS = (
    'nvcc',
    'cccl',
    'cudart',
    'crt',
    'nvvm',
    'cublas',
    'cusparse',
    'cusolver',
    'curand',
    'cufft',
)
# CUDA 12 cannot be provisioned: its package nvidia-cuda-nvcc-cu12 holds ptxas, nvvm and headers
# but not the nvcc driver, cicc or cudafe++ (checked: 12.8.93 and 12.9.86, x86_64).


class BuildCheckError(RuntimeError):
    """The mmcv build cannot succeed (or its result does not work); the message says why."""


class Gpu(NamedTuple):
    """A visible GPU: its name and compute capability (major, minor)."""

    name: str
    capability: tuple

    @property
    def arch(self) -> str:
        return f'{self.capability[0]}.{self.capability[1]}'


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the build decision depends on, as probed (or faked in tests).

    ``nvcc_version`` and ``nvcc_arches`` are the raw outputs of ``nvcc --version`` and
    ``nvcc --list-gpu-arch`` (None when nvcc is absent or the command failed);
    ``torch_requires`` is torch's Requires-Dist (it names the CUDA packages torch was built with).
    """

    torch_version: str
    torch_cuda: str | None
    torch_requires: tuple = ()
    gpus: tuple = ()
    nvcc: str | None = None
    nvcc_version: str | None = None
    nvcc_arches: str | None = None
    cpus: int = 1
    mem_gib: float = 0.0

    @classmethod
    def from_json(cls, text: str) -> 'Machine':
        data = json.loads(text)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise BuildCheckError(f'unknown machine fields {unknown}; accepted: {sorted(fields)}')
        data['gpus'] = tuple(Gpu(g['name'], tuple(g['capability'])) for g in data.get('gpus', ()))
        data['torch_requires'] = tuple(data.get('torch_requires', ()))
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """The mode (``cpu`` or ``cuda``), the variables to export and notes for the user."""

    mode: str
    exports: dict
    notes: tuple = ()

    def shell(self) -> str:
        return ''.join(f'export {k}={shlex.quote(str(v))}\n' for k, v in self.exports.items())


def version_major_minor(text: str) -> tuple:
    match = re.fullmatch(r'(\d+)\.(\d+)(?:\.\d+)?', text.strip())
    if not match:
        raise BuildCheckError(f'cannot read a CUDA version from {text!r}; expected e.g. 12.8')
    return int(match.group(1)), int(match.group(2))


def parse_nvcc_version(output: str) -> tuple:
    """(major, minor) from ``nvcc --version`` ("Cuda compilation tools, release 12.8, V12.8.93")."""
    match = re.search(r'release (\d+)\.(\d+)', output)
    if not match:
        raise BuildCheckError(f'cannot read the CUDA release from `nvcc --version`:\n{output}')
    return int(match.group(1)), int(match.group(2))


def parse_nvcc_arches(output: str) -> set:
    """Targets of ``nvcc --list-gpu-arch`` as arch strings: compute_90 -> '9.0', compute_90a
    -> '9.0a', compute_120 -> '12.0'."""
    arches = set()
    for major, minor, suffix in re.findall(r'compute_(\d+)(\d)([a-z]?)\b', output):
        arches.add(f'{int(major)}.{minor}{suffix}')
    return arches


def numeric_arches(arch_list: str) -> list:
    """The numeric entries of a TORCH_CUDA_ARCH_LIST ('8.0;9.0+PTX' -> ['8.0', '9.0']); named
    entries such as 'Hopper' are left to torch."""
    entries = [e for e in re.split(r'[;\s,]+', arch_list.strip()) if e]
    return [
        e[:-4] if e.endswith('+PTX') else e
        for e in entries
        if re.fullmatch(r'\d+\.\d+[a-z]?(\+PTX)?', e)
    ]


def max_jobs(cpus: int, mem_gib: float) -> int:
    """Parallel compiler processes that fit the cores and the memory (at least 1)."""
    return max(1, min(cpus, int(mem_gib // GIB_PER_JOB)))


def install_hint(torch_cuda: str) -> str:
    major = version_major_minor(torch_cuda)[0]
    dashed = torch_cuda.replace('.', '-')
    return (
        f"Install the CUDA {torch_cuda} toolkit (any {major}.x nvcc passes torch's check; "
        f"{torch_cuda} is safest), e.g. NVIDIA's `cuda-toolkit-{dashed}` package or conda's "
        f'`cuda-toolkit={torch_cuda}`, then put its bin/ on PATH or set CUDA_HOME to it. '
        'Or install a torch built for the CUDA you have.'
    )


def default_arch_list(torch_cuda: str) -> str:
    """TORCH_CUDA_ARCH_LIST for a build without a visible GPU (see DEFAULT_ARCHES)."""
    mm = version_major_minor(torch_cuda)
    return next(arches for since, arches in DEFAULT_ARCHES if mm >= since)


def cxx_std(torch_version: str) -> str:
    """C++ standard for mmcv's sources: torch >= 2.13's headers need C++20 (2.14 stops with
    #error under C++17, 2.13 uses C++20 constructs), older torch builds with mmcv's C++17."""
    match = re.match(r'(\d+)\.(\d+)', torch_version)
    if not match:
        raise BuildCheckError(f'cannot read torch version {torch_version!r}; expected e.g. 2.13.0')
    return 'c++20' if (int(match.group(1)), int(match.group(2))) >= (2, 13) else 'c++17'


def cuda_packages(torch_cuda: str, torch_requires: tuple = ()) -> list:
    """pip requirements for nvcc and the headers of CUDA ``torch_cuda`` (13 or newer): the
    `cuda-toolkit` version torch itself requires when it names one (torch >= 2.11), else that
    CUDA minor's. Raises BuildCheckError for older CUDA, whose nvcc is not on the index."""
    major, minor = version_major_minor(torch_cuda)
    if major >= 13:
        pinned = [
            m.group(1)
            for r in torch_requires
            if (m := re.match(r'cuda-toolkit\s*(?:\[[^\]]*\])?\s*(==\s*[\w.*]+)', r))
        ]
        version = pinned[0].replace(' ', '') if pinned else f'=={major}.{minor}.*'
        return [f'cuda-toolkit[{",".join(TOOLKIT_EXTRAS)}]{version}']
    detail = (
        ' (nvidia-cuda-nvcc-cu12 holds ptxas and headers but not the nvcc driver)'
        if major == 12
        else ''
    )
    raise BuildCheckError(
        f'the package index has no nvcc for CUDA {major}.x{detail}, so it cannot be installed '
        f'into the venv; it has one for CUDA 13, so a torch built for CUDA 13 also works. '
        + install_hint(torch_cuda)
    )


def plan_build(machine: Machine, env: Mapping) -> BuildPlan:
    """Decide the mmcv build for ``machine`` (pure: no probing, no side effects).

    CPU ops when torch has no CUDA, or no GPU is visible and FORCE_CUDA is not 1 (mmcv's own
    rule). Otherwise CUDA ops with nvcc of torch's CUDA major version; without one the plan is
    ``provision`` (MMDSNET_CUDA_PACKAGES: what to pip-install), unless MMDSNET_PROVISION_CUDA=0.
    Raises BuildCheckError when the build would fail. The cpu and cuda plans export
    MMCV_CXX_STD, the C++ standard for the patched mmcv sdist.
    """
    std = cxx_std(machine.torch_version)
    if machine.torch_cuda is None:
        return BuildPlan(
            CPU,
            {'MMDSNET_MMCV_BUILD': CPU, 'MMCV_CXX_STD': std},
            (f'torch {machine.torch_version} has no CUDA: mmcv gets its CPU ops ({std})',),
        )
    force = env.get('FORCE_CUDA', '0') == '1'
    if not machine.gpus and not force:
        return BuildPlan(
            CPU,
            {'MMDSNET_MMCV_BUILD': CPU, 'MMCV_CXX_STD': std},
            (
                f'torch {machine.torch_version} has CUDA {machine.torch_cuda} but sees no GPU: '
                f'mmcv gets its CPU ops ({std}); FORCE_CUDA=1 builds the CUDA ops anyway',
            ),
        )

    torch_cuda = machine.torch_cuda
    torch_mm = version_major_minor(torch_cuda)
    nvcc_mm = parse_nvcc_version(machine.nvcc_version) if machine.nvcc_version else None
    if nvcc_mm is None or nvcc_mm[0] != torch_mm[0]:
        if machine.nvcc is None or nvcc_mm is None:
            where = (
                f'at {machine.nvcc}' if machine.nvcc else 'on PATH, in CUDA_HOME or /usr/local/cuda'
            )
            why = f'no working nvcc was found {where}'
        else:
            why = (
                f'nvcc {machine.nvcc} is CUDA {nvcc_mm[0]}.{nvcc_mm[1]} and torch refuses to '
                f'build extensions with another major version ({torch_mm[0]} vs {nvcc_mm[0]})'
            )
        if env.get('MMDSNET_PROVISION_CUDA', '1') != '0':
            try:
                packages = cuda_packages(torch_cuda, machine.torch_requires)
            except BuildCheckError as exc:
                raise BuildCheckError(
                    f'torch {machine.torch_version} was built with CUDA {torch_cuda} and '
                    f"mmcv's CUDA ops need nvcc of CUDA {torch_mm[0]}.x to build, but {why}; "
                    f'{exc}'
                ) from None
            return BuildPlan(
                PROVISION,
                {'MMDSNET_MMCV_BUILD': PROVISION, 'MMDSNET_CUDA_PACKAGES': ' '.join(packages)},
                (
                    f'torch {machine.torch_version} was built with CUDA {torch_cuda} and {why}: '
                    f'installing nvcc and the CUDA headers from the package index '
                    f'({" ".join(packages)}) into the venv',
                ),
            )
        raise BuildCheckError(
            f"torch {machine.torch_version} was built with CUDA {torch_cuda} and mmcv's CUDA ops "
            f'need nvcc of CUDA {torch_mm[0]}.x to build, but {why}. MMDSNET_PROVISION_CUDA=0 '
            'forbids installing it from the package index (unset it to allow that). '
            + install_hint(torch_cuda)
        )
    nvcc_text = f'{nvcc_mm[0]}.{nvcc_mm[1]}'
    notes = []
    if nvcc_mm != torch_mm:
        notes.append(
            f'nvcc is CUDA {nvcc_text}, torch was built with {torch_cuda}: same major '
            'version, which torch accepts'
        )

    user_arch = env.get('TORCH_CUDA_ARCH_LIST', '').strip()
    gpu_arches = sorted({g.arch for g in machine.gpus}, key=lambda a: tuple(map(int, a.split('.'))))
    if user_arch:
        arch_list = user_arch
        arch_from = 'yours'
        missing = [a for a in gpu_arches if a not in numeric_arches(user_arch)]
        if missing and '+PTX' not in user_arch:
            notes.append(
                f'TORCH_CUDA_ARCH_LIST={user_arch!r} (yours, kept) has no kernels for the '
                f'visible GPU capability {", ".join(missing)}: ops will not run on them'
            )
    elif gpu_arches:
        arch_list = ';'.join(gpu_arches)
        arch_from = 'the visible GPUs'
    else:
        arch_list = default_arch_list(torch_cuda)
        arch_from = (
            f'no GPU is visible: the default for CUDA {torch_mm[0]}.{torch_mm[1]}; set '
            'TORCH_CUDA_ARCH_LIST to build fewer (each one adds to the build time)'
        )
    if machine.nvcc_arches:
        supported = parse_nvcc_arches(machine.nvcc_arches)
        unsupported = [a for a in numeric_arches(arch_list) if a not in supported]
        if supported and unsupported:
            # '9.0a' sorts after '9.0' (a set's order must not decide the tie).
            newest = max(supported, key=lambda a: (tuple(int(x) for x in re.findall(r'\d+', a)), a))
            oldest = min(supported, key=lambda a: (tuple(int(x) for x in re.findall(r'\d+', a)), a))
            raise BuildCheckError(
                f'nvcc {nvcc_text} ({machine.nvcc}) cannot compile for compute capability '
                f'{", ".join(unsupported)} (it targets {oldest} to {newest}); set '
                f'TORCH_CUDA_ARCH_LIST to targets it supports, or install a CUDA '
                f'{torch_mm[0]}.x toolkit that has them'
            )

    user_jobs = env.get('MAX_JOBS', '').strip()
    if user_jobs:
        if not user_jobs.isdigit() or int(user_jobs) < 1:
            raise BuildCheckError(f'MAX_JOBS={user_jobs!r} is not a positive integer')
        jobs = int(user_jobs)
        notes.append(f'MAX_JOBS={jobs} (yours, kept)')
    else:
        jobs = max_jobs(machine.cpus, machine.mem_gib)
        notes.append(
            f'MAX_JOBS={jobs} from {machine.cpus} cores and {machine.mem_gib:.0f} GiB '
            f'available memory ({GIB_PER_JOB} GiB per job)'
        )
    gpus = ', '.join(f'{g.name} ({g.arch})' for g in machine.gpus) or 'none visible'
    notes.insert(
        0,
        f'CUDA build: torch {machine.torch_version} (CUDA {torch_cuda}), nvcc '
        f'{nvcc_text} at {machine.nvcc}, GPUs: {gpus}, {std}, '
        f'TORCH_CUDA_ARCH_LIST={arch_list} ({arch_from})',
    )
    exports = {
        'MMDSNET_MMCV_BUILD': CUDA,
        'MMDSNET_NVCC': machine.nvcc,
        'FORCE_CUDA': '1',
        'MMCV_WITH_OPS': '1',
        'MMCV_CXX_STD': std,
        'TORCH_CUDA_ARCH_LIST': arch_list,
        'MAX_JOBS': str(jobs),
    }
    return BuildPlan(CUDA, exports, tuple(notes))


def smoke_compile(
    nvcc: str, arch_list: str, cc: str | None = None, std: str = 'c++17', timeout: float = 300
) -> None:
    """Compile a one-line kernel with the flags mmcv uses (its C++ standard, the target archs,
    $CC as the host compiler), so that a host compiler nvcc refuses shows up now, not mid-build."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'probe.cu')
        with open(src, 'w') as f:
            f.write('__global__ void add_one(float *x) { x[threadIdx.x] += 1.f; }\n')
        cmd = [nvcc, f'-std={std}', '-c', src, '-o', os.path.join(tmp, 'probe.o')]
        for arch in numeric_arches(arch_list):
            num = arch.replace('.', '')
            cmd += ['-gencode', f'arch=compute_{num},code=sm_{num}']
        if cc:
            cmd += ['-ccbin', cc]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildCheckError(f'could not run nvcc ({" ".join(cmd)}): {exc}') from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()[-2000:]
        raise BuildCheckError(
            f'nvcc cannot compile a one-line CUDA kernel for TORCH_CUDA_ARCH_LIST={arch_list}, so '
            f"mmcv's build would fail too. Command: {' '.join(cmd)}\n{output}\nA host compiler "
            'newer than this nvcc supports is the usual cause: set CC to a supported gcc.'
        )


# ----------------------------------------------------------------------------- probing this machine
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def probe_cpus() -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    quota = (_read('/sys/fs/cgroup/cpu.max') or 'max').split()
    if len(quota) == 2 and quota[0] != 'max':
        cpus = min(cpus, max(1, math.ceil(int(quota[0]) / int(quota[1]))))
    return max(1, cpus or 1)


def probe_mem_gib() -> float:
    """Available memory in GiB: MemAvailable, capped by the cgroup's remaining limit."""
    meminfo = _read('/proc/meminfo') or ''
    match = re.search(r'^MemAvailable:\s+(\d+) kB', meminfo, re.M)
    avail = int(match.group(1)) * 1024 if match else 0
    for limit_path, used_path in (
        ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
        (
            '/sys/fs/cgroup/memory/memory.limit_in_bytes',
            '/sys/fs/cgroup/memory/memory.usage_in_bytes',
        ),
    ):
        limit, used = _read(limit_path), _read(used_path)
        if limit and limit.isdigit() and used and used.isdigit() and int(limit) < 1 << 60:
            avail = min(avail, int(limit) - int(used)) if avail else int(limit) - int(used)
    return max(0, avail) / 2**30


def run_nvcc(nvcc: str, *args: str) -> str | None:
    """stdout of ``nvcc ARGS``, or None when it cannot run or fails."""
    try:
        proc = subprocess.run([nvcc, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def find_nvcc() -> str | None:
    """The nvcc torch's extension builder will use: CUDA_HOME/bin/nvcc with torch's CUDA_HOME
    (CUDA_HOME or CUDA_PATH, else the nvcc on PATH, else /usr/local/cuda)."""
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME:
        nvcc = os.path.join(CUDA_HOME, 'bin', 'nvcc')
        return nvcc if os.path.isfile(nvcc) else None
    return shutil.which('nvcc')


def probe() -> Machine:
    """Probe this machine with the torch of the running Python."""
    try:
        import torch
    except ImportError as exc:
        raise BuildCheckError(f'torch is not importable in {sys.executable}: {exc}') from exc
    try:
        from importlib.metadata import requires

        torch_requires = tuple(requires('torch') or ())
    except Exception:  # torch found without its metadata (e.g. on PYTHONPATH)
        torch_requires = ()
    machine = Machine(
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        torch_requires=torch_requires,
        cpus=probe_cpus(),
        mem_gib=probe_mem_gib(),
    )
    if machine.torch_cuda is None:
        return machine
    gpus = ()
    if torch.cuda.is_available():
        gpus = tuple(
            Gpu(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())
        )
    nvcc = find_nvcc()
    return dataclasses.replace(
        machine,
        gpus=gpus,
        nvcc=nvcc,
        nvcc_version=run_nvcc(nvcc, '--version') if nvcc else None,
        nvcc_arches=run_nvcc(nvcc, '--list-gpu-arch') if nvcc else None,
    )


# ----------------------------------------------------------------------------- provisioned CUDA
def cuda_package_roots(site_packages: str) -> list:
    """Folders of the NVIDIA pip packages that hold a CUDA tree (bin, include, lib, nvvm):
    ``nvidia/cu13`` for CUDA 13, one per package (``nvidia/cuda_nvcc``...) for CUDA 12."""
    base = os.path.join(site_packages, 'nvidia')
    if not os.path.isdir(base):
        return []
    parts = ('bin', 'include', 'lib', 'nvvm')
    return [
        os.path.join(base, d)
        for d in sorted(os.listdir(base))
        if any(os.path.isdir(os.path.join(base, d, p)) for p in parts)
    ]


def assemble_cuda_home(roots: list, dest: str) -> str:
    """Merge the CUDA trees ``roots`` into ``dest`` as a CUDA_HOME: real folders holding one
    link per file (nvcc finds ``bin/../lib64`` and ``nvvm`` from its own real path, so ``bin``
    itself must not be a link), ``lib`` renamed ``lib64`` (``lib`` links to it), and an
    unversioned ``libX.so`` for each ``libX.so.N`` (the linker's ``-lcudart``). The first root
    wins where two hold the same file. Rebuilt from scratch on each call; returns nvcc's path."""
    if os.path.lexists(dest):
        shutil.rmtree(dest)
    for root in roots:
        for folder, dirs, files in os.walk(root):
            rel = os.path.relpath(folder, root)
            top, _, rest = rel.partition(os.sep)
            if top == 'lib':
                rel = os.path.join('lib64', rest) if rest else 'lib64'
            if rel == '.' and '__pycache__' in dirs:
                dirs.remove('__pycache__')
            out = os.path.normpath(os.path.join(dest, rel))
            os.makedirs(out, exist_ok=True)
            for name in files:
                link = os.path.join(out, name)
                if rel != '.' and not os.path.lexists(link):
                    os.symlink(os.path.realpath(os.path.join(folder, name)), link)
    lib64 = os.path.join(dest, 'lib64')
    if os.path.isdir(lib64):
        for name in sorted(os.listdir(lib64)):
            match = re.fullmatch(r'(lib[\w+-]+\.so)\.\d+', name)
            if match and not os.path.lexists(os.path.join(lib64, match.group(1))):
                os.symlink(name, os.path.join(lib64, match.group(1)))
        os.symlink('lib64', os.path.join(dest, 'lib'))
    nvcc = os.path.join(dest, 'bin', 'nvcc')
    if not os.path.isfile(nvcc):
        raise BuildCheckError(
            f'no bin/nvcc in the NVIDIA packages at {", ".join(roots) or "(none found)"}: '
            'install the pip packages that MMDSNET_CUDA_PACKAGES names first'
        )
    return nvcc


# ----------------------------------------------------------------------------- after the build
def verify_ops(device: str, expect_mmcv: str | None = None) -> str:
    """Run mmcv's nms and RoIAlign (forward and backward) on ``device`` and compare them with the
    CPU kernels. On a CUDA device the ops must be compiled with CUDA; if no GPU is visible
    (a FORCE_CUDA build) only that is checked. Returns what was verified."""
    try:
        import mmcv
        import torch
        from mmcv.ops import RoIAlign, get_compiling_cuda_version, nms
    except ImportError as exc:
        raise BuildCheckError(f'mmcv with compiled ops is not importable: {exc}') from exc
    if expect_mmcv and mmcv.__version__ != expect_mmcv:
        raise BuildCheckError(f'mmcv {mmcv.__version__} is installed, {expect_mmcv} expected')
    where = device
    if device.startswith(CUDA):
        compiled = get_compiling_cuda_version()
        if compiled == 'not available':
            raise BuildCheckError(f'mmcv {mmcv.__version__} was built without its CUDA ops')
        if not torch.cuda.is_available():
            return (
                f'mmcv {mmcv.__version__} has CUDA ops (compiled with CUDA {compiled}); no GPU '
                'is visible to run them'
            )
        where = (
            f'{torch.device(device)} ({torch.cuda.get_device_name(torch.device(device))}), '
            f'compiled with CUDA {compiled}'
        )

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 96
    boxes = torch.cat([xy, xy + 8 + torch.rand(200, 2, generator=gen) * 24], 1)
    scores = torch.rand(200, generator=gen)
    feats = torch.rand(2, 16, 32, 32, generator=gen)
    rois = torch.cat([torch.randint(0, 2, (50, 1), generator=gen).float(), boxes[:50]], 1)
    roi_align = RoIAlign(output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)

    def run(dev):
        # A copy on every device: on the CPU .to() would return ``feats`` itself, which
        # would then require grad, and the CUDA copy made from it would be no leaf.
        f = feats.to(dev, copy=True).requires_grad_()
        out = roi_align(f, rois.to(dev))
        out.backward(torch.ones_like(out))
        keep = nms(boxes.to(dev), scores.to(dev), 0.5)[1]
        return keep.cpu(), out.detach().cpu(), f.grad.cpu(), keep.device

    try:
        ref = run('cpu')
        got = run(device)
        if device.startswith(CUDA):
            torch.cuda.synchronize()
    except RuntimeError as exc:
        raise BuildCheckError(f'mmcv ops failed on {device}: {exc}') from exc
    if got[3].type != torch.device(device).type:
        raise BuildCheckError(f'mmcv ops returned tensors on {got[3]}, not on {device}')
    if not torch.equal(got[0], ref[0]):
        raise BuildCheckError(f'nms on {device} kept other boxes than on the CPU')
    for name, a, b in (('RoIAlign forward', got[1], ref[1]), ('RoIAlign backward', got[2], ref[2])):
        if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
            raise BuildCheckError(
                f'{name} on {device} differs from the CPU by {(a - b).abs().max().item():.3g}'
            )
    return (
        f'mmcv {mmcv.__version__} ops verified on {where}: nms ({len(got[0])} of 200 boxes '
        'kept) and RoIAlign forward and backward match the CPU kernels'
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--machine',
        metavar='FILE',
        help='decide for the machine described in this JSON file (the fields of '
        'Machine) instead of probing this one; environment variables still apply',
    )
    parser.add_argument(
        '--verify-ops',
        metavar='DEVICE',
        help='run mmcv nms and RoIAlign on DEVICE (cpu, cuda, cuda:1) and '
        'compare them with the CPU kernels',
    )
    parser.add_argument('--expect-mmcv', metavar='VERSION', help='with --verify-ops: mmcv version')
    parser.add_argument(
        '--assemble-cuda-home',
        metavar='DIR',
        help="build a CUDA_HOME in DIR from the NVIDIA pip packages of this Python's "
        'site-packages (see MMDSNET_CUDA_PACKAGES) and print its path',
    )
    args = parser.parse_args(argv)
    try:
        if args.assemble_cuda_home:
            import sysconfig

            roots = cuda_package_roots(sysconfig.get_paths()['purelib'])
            nvcc = assemble_cuda_home(roots, os.path.abspath(args.assemble_cuda_home))
            print(os.path.dirname(os.path.dirname(nvcc)))
            return 0
        if args.verify_ops:
            print(f'[install] {verify_ops(args.verify_ops, args.expect_mmcv)}')
            return 0
        if args.machine:
            with open(args.machine) as f:
                machine = Machine.from_json(f.read())
        else:
            machine = probe()
        plan = plan_build(machine, os.environ)
        if plan.mode == CUDA:
            smoke_compile(
                plan.exports['MMDSNET_NVCC'],
                plan.exports['TORCH_CUDA_ARCH_LIST'],
                os.environ.get('CC'),
                plan.exports['MMCV_CXX_STD'],
            )
    except BuildCheckError as exc:
        print(f'[install] error: {exc}', file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f'[install] {note}', file=sys.stderr)
    sys.stdout.write(plan.shell())
    return 0


if __name__ == '__main__':
    sys.exit(main())
