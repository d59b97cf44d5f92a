"""Versions of the machine and the stack as JSON: `make gpu-check`'s env step.

    python tools/gpu_check/describe_env.py OUT/env.json

GPU, driver, torch, CUDA, cuDNN, NCCL, and the OpenMMLab packages as installed; a
package that does not import is recorded with the error, not raised.
"""

import json
import platform
import subprocess
import sys


def describe():
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
    return info


if __name__ == '__main__':
    if len(sys.argv) != 2:
        raise SystemExit(f'usage: {sys.argv[0]} OUT.json')
    info = describe()
    with open(sys.argv[1], 'w') as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
