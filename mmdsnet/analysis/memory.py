"""Memory of a model run: the activations autograd keeps between forward and
backward, and the peak a benchmark case reaches (the CUDA allocator's on a GPU,
the resident set's growth on the CPU, with the C heap trimmed between runs)."""

import ctypes
import os
import resource
import subprocess
from typing import Any, Sequence, Tuple, Union

import torch
import torch.nn as nn


def saved_activations_mb(model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]]) -> float:
    """MB of tensors autograd keeps from one forward of ``model`` for its backward.

    Counted through saved-tensor hooks, once per storage, parameters and
    buffers excluded. Inside an activation-checkpointed block the checkpoint's
    own hooks drop the tensors and recompute them, so only what it really keeps
    (the block input) is seen: this is the memory ``with_cp`` is meant to cut,
    and unlike the process's resident set it does not depend on the allocator.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = storage.nbytes()
        # Handing back the tensor itself would tie a saved output to its own
        # grad_fn in a C++ reference cycle that no gc breaks (the whole graph
        # leaked on every call); a detached view keeps the storage, not the node.
        return tensor.detach()

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = model(*inputs)
    del outputs
    return sum(kept.values()) / 2**20


def release_free_heap(device: torch.device) -> None:
    """Hand the C heap's free pages back to the OS before a timed CPU run.

    glibc keeps freed activations in its heap, and with ten models run in
    turn the heap fragments (6 GB held for four 224 batch-8 training cases
    that each peak under 1 GB). Trimming bounds the process and puts every
    case on the same footing: each run pays the page faults of touching its
    working set (about 10% at 224 batch 8 in training here).
    """
    if device.type == 'cpu' and _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL('libc.so.6')
        return libc if hasattr(libc, 'malloc_trim') else None  # glibc only
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def peak_memory_mb(case, device, command: Sequence[str]) -> float:
    """Peak memory in MB of one run of the case, measured in isolation.

    On a GPU: the CUDA allocator's peak over what was allocated before. On the
    CPU the case runs in a fresh interpreter, ``command``, which must print
    :func:`measure_rss_growth_mb` of this case as its last line (the benchmark
    tool with ``--measure-memory INDEX``): forking a process whose OpenMP pool
    is already running can deadlock, and a fresh process makes the peak
    independent of the cases measured before it.
    """
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        case.run_once(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # A fixed mmap threshold makes glibc hand every block of 64 KB or more
    # back to the OS when it is freed; with the default, adaptive threshold
    # freed tensors stay in the heap after the warm-up run, so the resident
    # set would not follow the live memory and the peak would be understated.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    result = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f'memory measurement of {case.name} failed:\n{result.stderr[-3000:]}')
    return float(result.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'{field} not in /proc/self/status')


def measure_rss_growth_mb(case, device: torch.device) -> float:
    """Run one case in this process; peak resident-set growth in MB.

    The case runs once to warm up (lazy library initialisation, allocator
    pools), then Linux's peak-RSS mark is reset (``clear_refs`` 5) and the
    growth of the peak over the current RSS during a second run is reported.
    Where the mark cannot be reset, the first run's ``ru_maxrss`` growth is.
    """
    case.prepare(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    case.run_once(device)
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    base = _status_mb('VmRSS')
    case.run_once(device)
    return _status_mb('VmHWM') - base
