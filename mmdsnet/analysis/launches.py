"""Kernel launches counted on the CPU: every aten operator that would launch
a kernel on a GPU, recorded by a ``TorchDispatchMode``.

A training step of many small operators waits on the host, not on the GPU
(docs/performance.md): each operator costs host time to dispatch and
launch. The count compares backbones on any machine. It is taken on the CPU,
where a few operators decompose otherwise than on CUDA (the attention
kernels, autocast's float32 list), so it ranks models rather than giving a
CUDA launch total.

The rule (``launches_kernel``): an operator reaching the dispatcher counts
once, unless it only makes a view or changes metadata, which needs no kernel:

* views and in-place views (aliasing outputs: ``view``, ``permute``,
  ``expand``, ``slice``, ``detach``, ``as_strided_``, ...) and
  ``_unsafe_view``;
* allocations without a fill (``empty``, ``empty_strided``, ``new_empty``,
  ...), ``resize_``, ``set_`` and ``lift_fresh``.

Everything else counts: copies and casts (``_to_copy``, ``clone``,
``copy_``), fills (``zeros``, ``fill_``), random draws, and the sums autograd
makes of the gradients of a tensor used twice. Operators run below autograd,
so the backward's count as they dispatch; composite operators count by what
they decompose into. DS-Net's counts do not depend on the input size
(``tests/analysis/test_launches.py``); Swin's grow where its windows need
padding (sides not multiples of 4 x 7 x 8 = 224).
"""

from collections import Counter
from typing import Callable, Dict, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: Operators that allocate or change metadata only (no kernel).
NO_KERNEL = frozenset(
    {
        aten._unsafe_view.default,
        aten.empty.memory_format,
        aten.empty_like.default,
        aten.empty_strided.default,
        aten.new_empty.default,
        aten.new_empty_strided.default,
        aten.resize_.default,
        aten.set_.source_Storage_storage_offset,
        aten.set_.source_Tensor,
        aten.lift_fresh.default,
    }
)


def launches_kernel(func: torch._ops.OpOverload) -> bool:
    """Whether the aten operator ``func`` counts as a kernel launch (see the
    module docstring)."""
    if func.is_view or torch.Tag.inplace_view in func.tags:
        return False
    return func not in NO_KERNEL


class LaunchCounter(TorchDispatchMode):
    """Count the kernel-launching aten operators run inside the mode, by name
    (``counts``) and in all (``total``)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if launches_kernel(func):
            self.counts[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_launches(fn: Callable[[], object]) -> LaunchCounter:
    """Run ``fn()`` once under a :class:`LaunchCounter` and return it."""
    with LaunchCounter() as counter:
        fn()
    return counter


#: What ``backbone_launches`` counts: a training step in fp32, one under
#: bfloat16 autocast, and an inference forward.
MODES = ('train fp32', 'train bf16', 'eval')


def _outputs_loss(outputs) -> torch.Tensor:
    """Sum of the outputs' means in float32: the same few operators for
    every backbone with as many outputs."""
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return sum(out.float().mean() for out in outputs)


def backbone_launches(
    model: torch.nn.Module,
    input_shape: Sequence[int] = (2, 3, 224, 224),
    modes: Optional[Sequence[str]] = None,
) -> Dict[str, int]:
    """Kernel launches of ``model`` on a CPU input of ``input_shape``, per mode.

    ``'train fp32'`` and ``'train bf16'``: forward in training mode (under
    ``torch.autocast('cpu', torch.bfloat16)`` for bf16, as
    ``AmpOptimWrapper(dtype='bfloat16')`` runs it), a float32 loss (sum of
    the outputs' means) and the backward, into gradients set to ``None``
    as ``optimizer.zero_grad()`` leaves them. ``'eval'``: the
    forward in eval mode under ``torch.no_grad``. Each mode runs once
    uncounted first, so that what is built on first use (cached inference
    weights, constants) is not counted: the counts are those of every
    further step. The model is left in eval mode, its gradients set.
    """
    modes = tuple(MODES if modes is None else modes)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f'unknown modes {sorted(unknown)}; accepted: {list(MODES)}')
    images = torch.randn(*input_shape)
    model = model.cpu()

    def train_step(dtype):
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = _outputs_loss(model(images))
        loss.backward()

    def eval_forward():
        model.eval()
        with torch.no_grad():
            model(images)

    steps = {
        'train fp32': lambda: train_step(torch.float32),
        'train bf16': lambda: train_step(torch.bfloat16),
        'eval': eval_forward,
    }
    counts = {}
    for mode in modes:
        steps[mode]()
        counts[mode] = count_launches(steps[mode]).total
    model.eval()
    return counts
