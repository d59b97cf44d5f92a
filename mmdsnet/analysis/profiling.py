"""The runs the measuring tools time and profile (a backbone step, a detector
training iteration) and torch.profiler's view of one run: the operator table
and the self time per operator family, i.e. where a step's time goes."""

import os
import os.path as osp
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .inputs import autocast

# First match wins: norm before convolution (cuDNN's BN kernels say 'cudnn').
FAMILIES = {
    'attention (SDPA)': ('attention', 'flash', 'fmha', 'sdpa'),
    'roi ops / nms (mmcv)': ('roi', 'nms'),
    'norm': ('batch_norm', 'layer_norm', 'group_norm', 'native_norm', 'bn_fw', 'bn_bw'),
    'convolution': ('conv', 'cudnn', 'implicit_gemm', 'xmma', 'winograd', 'mkldnn_convolution'),
    'matmul': ('aten::mm', 'addmm', 'bmm', 'gemm', 'matmul', 'linear'),
    'interpolation': ('upsample', 'interpolate', 'grid_sampler'),
    'optimizer': ('adam', 'foreach', 'multi_tensor'),
    'copies / layout': ('copy', 'clone', 'contiguous', 'cat', 'index'),
    'GELU': ('gelu',),
    'elementwise': ('add', 'mul', 'relu', 'sigmoid', 'exp', 'elementwise'),
}
#: The phases of a detector training iteration, as :func:`detector_iteration` names them.
PHASES = ('forward + loss', 'backward', 'optimizer step')


def sync(device: torch.device) -> None:
    """Wait for the work queued on a GPU, so that a timing covers it."""
    if device.type == 'cuda':
        torch.cuda.synchronize()


def backbone_step(model, x: torch.Tensor, train: bool = False, precision: str = 'fp32') -> None:
    """One backbone run: inference without grad, or forward and backward of the
    summed outputs; the forward under autocast unless ``precision`` is fp32."""
    if not train:
        with torch.no_grad(), autocast(x.device.type, precision):
            model(x)
        return
    model.zero_grad(set_to_none=True)
    with autocast(x.device.type, precision):
        outs = model(x)
    sum(o.float().sum() for o in outs).backward()


def detector_iteration(model, data, optimizer, scaler, amp=False, phase=nullcontext) -> None:
    """One training iteration as ``tools/train.py`` runs it: forward and loss
    (under fp16 autocast with ``amp``), backward through ``scaler``, an optimizer
    step. ``phase(name)`` wraps each of :data:`PHASES` (to label or time it)."""
    optimizer.zero_grad(set_to_none=True)
    with phase(PHASES[0]), torch.autocast(data['inputs'].device.type, torch.float16, amp):
        loss, _ = model.parse_losses(model(**data, mode='loss'))
    with phase(PHASES[1]):
        scaler.scale(loss).backward()
    with phase(PHASES[2]):
        scaler.step(optimizer)
        scaler.update()


def median_wall_ms(run: Callable[[], None], device: torch.device, trials: int = 3) -> float:
    """Median wall time of ``trials`` calls of ``run``, synchronised on a GPU."""
    times = []
    for _ in range(trials):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[trials // 2]


@contextmanager
def timed_phase(times: Dict[str, float], name: str, device: torch.device):
    """Adds the synchronised wall time of the block to ``times[name]``, in ms."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    times[name] = times.get(name, 0.0) + (time.perf_counter() - start) * 1e3


def family_of(name: str) -> str:
    """The family an operator or kernel name belongs to ('other' if none)."""
    lowered = name.lower()
    for family, fragments in FAMILIES.items():
        if any(f in lowered for f in fragments):
            return family
    return 'other'


def family_shares(events: Iterable, on_gpu: bool, skip=()) -> Dict[str, float]:
    """Self time per family in microseconds, from ``prof.key_averages()``.

    On a GPU an operator's self device time is its kernels' time, which the
    kernels' own rows repeat, so only kernel rows are counted there.
    """
    events = list(events)
    attr = 'self_device_time_total' if on_gpu else 'self_cpu_time_total'
    kernels = [e for e in events if on_gpu and getattr(e, 'device_type', None) == DeviceType.CUDA]
    shares: Dict[str, float] = {}
    for event in kernels or events:
        if event.key in skip:
            continue
        family = family_of(event.key)
        shares[family] = shares.get(family, 0) + getattr(event, attr)
    return shares


@dataclass
class Profile:
    """One profiled run: torch.profiler's averaged events and the family shares."""

    events: object
    on_gpu: bool
    shares: Dict[str, float]

    @property
    def total_us(self) -> float:
        return sum(self.shares.values()) or 1

    def family_lines(self, width: int) -> List[str]:
        """One line per family, most time first: ms and share of the total."""
        return [
            f'  {family:{width}s} {micros / 1e3:9.1f} ms  {100 * micros / self.total_us:5.1f}%'
            for family, micros in sorted(self.shares.items(), key=lambda kv: -kv[1])
        ]

    def table(self, top: int) -> str:
        """The operators with the most self time (device time on a GPU)."""
        sort_by = 'self_device_time_total' if self.on_gpu else 'self_cpu_time_total'
        return self.events.table(sort_by=sort_by, row_limit=top)


def profile_run(run: Callable[[], None], device: torch.device, skip=()) -> Profile:
    """Profile one call of ``run`` (CPU, and CUDA on a GPU); ``skip``: event
    names left out of the shares (the labels of ``record_function`` ranges)."""
    on_gpu = device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    sync(device)
    with profile(activities=activities) as prof:
        run()
        sync(device)
    events = prof.key_averages()
    return Profile(events, on_gpu, family_shares(events, on_gpu, skip))


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, making its folder."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
