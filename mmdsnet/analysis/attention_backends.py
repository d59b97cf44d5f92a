"""SDPA backends: which PyTorch attention kernel each DS-Block attention runs
on, and the shapes of those attentions.

``F.scaled_dot_product_attention`` picks a backend per call: on CUDA the fused
flash, memory-efficient or cuDNN kernels when the call meets their conditions
(dtype, head size, strides, alignment), else the math backend, which
materialises the (Lq, Lk) attention map. Nothing warns when that happens, so
:func:`describe_sdpa_calls` runs a model once and reports, for every SDPA call,
its shapes and layout, the backend PyTorch chooses for it and, optionally,
which backends would accept it (each tried alone under
``torch.nn.attention.sdpa_kernel``).

The model is not changed: calls are seen through a ``TorchFunctionMode`` and
attributed to the innermost module that carries a ``num_heads`` attribute and
whose forward is running (forward hooks), e.g. ``stages.0.1``.
:func:`attention_shapes` gives the calls' shapes per stage from the architecture
alone, for timing the kernels on them.
"""

import warnings
from contextlib import nullcontext
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from ..models import DSNet

#: The three attentions of a DS-Block, in the order its forward calls them.
ATTENTIONS = ('global self', 'local q, global kv', 'global q, local kv')

#: Backends that never materialise the attention map.
FUSED_BACKENDS = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
)
_BACKEND_NAMES = {
    SDPBackend.FLASH_ATTENTION: 'flash',
    SDPBackend.EFFICIENT_ATTENTION: 'efficient',
    SDPBackend.CUDNN_ATTENTION: 'cudnn',
    SDPBackend.MATH: 'math',
}


def backend_of_call(query, key, value, **kwargs) -> str:
    """The backend ``F.scaled_dot_product_attention`` picks for these inputs.

    Asks PyTorch's own selector (``torch._fused_sdp_choice``, what the public
    function calls), so the answer follows the installed version's rules.
    """
    choice = SDPBackend(torch._fused_sdp_choice(query, key, value, **kwargs))
    return _BACKEND_NAMES.get(choice, choice.name.lower())


def eligible_backends(query, key, value, **kwargs) -> Dict[str, bool]:
    """For each backend on the tensors' device: does it accept this call alone?"""
    candidates = FUSED_BACKENDS + (SDPBackend.MATH,)
    if query.device.type != 'cuda':
        # CPU has one fused kernel (reported as flash) and the math path.
        candidates = (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)
    result = {}
    for backend in candidates:
        try:
            # Each refusal warns why; the answer is the point, not the warning.
            with sdpa_kernel([backend]), warnings.catch_warnings():
                warnings.simplefilter('ignore')
                F.scaled_dot_product_attention(query, key, value, **kwargs)
            result[_BACKEND_NAMES[backend]] = True
        except RuntimeError:
            result[_BACKEND_NAMES[backend]] = False
    return result


class _RecordSdpa(TorchFunctionMode):
    """Sees every ``F.scaled_dot_product_attention`` call and describes it."""

    def __init__(self, owner: List[str], with_eligibility: bool):
        super().__init__()
        self.owner = owner
        self.with_eligibility = with_eligibility
        self.calls: List[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        # PyTorch leaves this mode while its __torch_function__ runs, so the
        # probing calls below are not recorded again.
        query, key, value = args[:3]
        module = self.owner[-1] if self.owner else ''
        record = dict(
            module=module,
            index_in_module=sum(1 for c in self.calls if c['module'] == module),
            batch=query.shape[0],
            heads=query.shape[1],
            query_len=query.shape[-2],
            key_len=key.shape[-2],
            head_dims=query.shape[-1],
            dtype=str(query.dtype).replace('torch.', ''),
            device=query.device.type,
            last_dim_contiguous=all(t.stride(-1) == 1 for t in (query, key, value)),
            strides=[list(t.stride()) for t in (query, key, value)],
        )
        record['backend'] = backend_of_call(*args[:3], **kwargs)
        if self.with_eligibility:
            record['eligible'] = eligible_backends(*args[:3], **kwargs)
        out = func(*args, **kwargs)
        self.calls.append(record)
        return out


def describe_sdpa_calls(
    model: nn.Module,
    inputs: torch.Tensor,
    dtype: Optional[torch.dtype] = None,
    with_eligibility: bool = True,
) -> List[dict]:
    """Run ``model(inputs)`` once and describe every SDPA call it makes.

    ``dtype`` (torch.float16 / torch.bfloat16) runs the forward under
    autocast on the inputs' device. Each record holds the calling module
    (the innermost one with ``num_heads``), shapes, dtype, whether the last
    dimension is contiguous, the chosen backend and, with
    ``with_eligibility``, ``{backend: accepted}``. The backward pass runs the
    backward kernel of the backend chosen in the forward.
    """
    owner: List[str] = []
    handles = []
    for name, module in model.named_modules():
        if hasattr(module, 'num_heads') and name:
            handles.append(module.register_forward_pre_hook(_push(owner, name)))
            handles.append(module.register_forward_hook(_pop(owner)))
    autocast = (
        torch.autocast(inputs.device.type, dtype=dtype) if dtype is not None else nullcontext()
    )
    recorder = _RecordSdpa(owner, with_eligibility)
    try:
        with torch.no_grad(), autocast, recorder:
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.calls


def _push(owner, name):
    def hook(module, args):
        owner.append(name)

    return hook


def _pop(owner):
    def hook(module, args, output):
        owner.pop()

    return hook


def attention_shapes(arch, height: int, width: int) -> List[tuple]:
    """(stage, attention, heads, Lq, Lk, head_dims) of one block per stage of
    DSNet ``arch`` on a ``height`` x ``width`` input, stages from 0.

    Read off a built DSNet, so the global grids follow its ``global_resize``
    (stage 4 shrinks its 1/32 map by 2 again) and its padding (maps are
    ceil(size / stride)).
    """
    model = DSNet(arch)
    shapes = []
    for stage, (embed, blocks) in enumerate(zip(model.patch_embeds, model.stages)):
        height, width = -(-height // embed.stride[0]), -(-width // embed.stride[1])
        block = blocks[0]
        num_local = height * width
        grid_h, grid_w = block.global_size(height, width)
        num_global = grid_h * grid_w
        heads = block.num_heads
        head_dims = embed.out_channels // 2 // heads
        lengths = ((num_global, num_global), (num_local, num_global), (num_global, num_local))
        shapes += [
            (stage, name, heads, len_q, len_k, head_dims)
            for name, (len_q, len_k) in zip(ATTENTIONS, lengths)
        ]
    return shapes
