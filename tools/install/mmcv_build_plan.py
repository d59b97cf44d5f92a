"""The mmcv build decision for tools/install/install_env.sh: CPU ops, CUDA ops, or first
provision nvcc from the package index.

mmcv 2.1.0 compiles its CUDA kernels when torch sees a GPU (or FORCE_CUDA=1). That build takes
minutes to an hour, so the conditions it needs are decided first: an nvcc of the CUDA major
version torch was built with and compute capabilities that nvcc can target. TORCH_CUDA_ARCH_LIST
comes from the visible GPUs (without a GPU: a default list for torch's CUDA) and MAX_JOBS from
the cores and memory, unless the user set them. When no nvcc of torch's CUDA major version is
found, the plan is to provision one: the compiler and headers of torch's CUDA version from the
package index (``MMDSNET_CUDA_PACKAGES``).

Pure: :func:`plan_build` reads only a :class:`Machine` and the environment variables handed to
it, so it is tested with faked machines; probing this machine, compiling and verifying the build
are in cuda_build_env.py beside it. No mmdsnet imports: this runs before mmdsnet is installed.
"""

import dataclasses
import json
import re
import shlex
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
