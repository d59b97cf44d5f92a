"""How tools/install/install_env.sh builds mmcv's compiled ops: CPU only, or CUDA.

Probes this machine (torch, GPUs, nvcc, cores, memory) and decides with
mmcv_build_plan.py beside it; for a CUDA build it also checks that a host compiler nvcc accepts
is there (a one-line kernel is compiled). Run as a script it prints shell ``export`` lines for
install_env.sh to ``eval`` (notes go to stderr), or says what is wrong and what to install and
exits with 2. ``--machine FILE`` decides for a machine described in a JSON file instead of
probing this one. ``--assemble-cuda-home DIR`` assembles a CUDA_HOME from the NVIDIA packages
provisioned into the venv. ``--verify-ops DEVICE`` runs mmcv's nms and RoIAlign (forward and
backward) on DEVICE and compares them with the CPU kernels. No mmdsnet imports: this runs before
mmdsnet is installed.
"""

import argparse
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

# The decision lives beside this script (its folder is on the path when it runs; install_env.sh's
# import check puts it there, and the tests load mmcv_build_plan first).
from mmcv_build_plan import (
    CUDA,
    BuildCheckError,
    Gpu,
    Machine,
    numeric_arches,
    plan_build,
)


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
