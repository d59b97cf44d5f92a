"""DS-Net's attention: PyTorch's fused SDPA kernels, chosen and fed for the
shapes of the DS-Block (one global grid against a full-resolution map).

``attention`` is what every DS-Block attention calls: on CUDA without
cuDNN's backend (``cuda_sdpa_backends``), and with many queries over few keys
folded into the batch when a backward will run (``attention_folds``).
"""

from typing import List

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def cuda_sdpa_backends() -> List[SDPBackend]:
    """The SDPA backends enabled now, less cuDNN's.

    On CUDA DS-Net's attention runs on flash (fp16/bf16) or memory-efficient
    attention (fp32). cuDNN's kernel builds a graph for every new input shape
    (detection batches change shape all the time) and costs more host time per
    call (docs/performance.md, "SDPA backends"). A restriction the caller set
    with ``torch.nn.attention.sdpa_kernel`` is kept; if it allows cuDNN alone,
    cuDNN is used.
    """
    flags = (
        (SDPBackend.FLASH_ATTENTION, torch.backends.cuda.flash_sdp_enabled()),
        (SDPBackend.EFFICIENT_ATTENTION, torch.backends.cuda.mem_efficient_sdp_enabled()),
        (SDPBackend.MATH, torch.backends.cuda.math_sdp_enabled()),
    )
    return [backend for backend, enabled in flags if enabled]


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float):
    """``F.scaled_dot_product_attention``; on CUDA without cuDNN's backend."""
    if query.is_cuda and torch.backends.cuda.cudnn_sdp_enabled():
        backends = cuda_sdpa_backends()
        if backends:
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)


#: A folded chunk keeps at least this many queries (each thread block of the
#: backward walks all queries of its chunk, so its key/value loads amortise).
MIN_FOLD_QUERIES = 1024
#: Key rows per thread block of the fused backward kernels (64 for PyTorch's
#: memory-efficient kernel, 128 for flash; the smaller one counts blocks).
KEYS_PER_BACKWARD_BLOCK = 64
#: Thread blocks per streaming multiprocessor the folding aims at.
BLOCKS_PER_SM = 4


def query_folds(batch_heads: int, len_q: int, len_k: int, num_sms: int) -> int:
    """Into how many chunks to fold the queries of one attention's backward.

    The fused backward kernels (flash and memory-efficient) start one thread
    block per (batch, head, block of keys) and each walks every query. The
    stage-1 co-attention at 800x1344 has 67,200 local queries and 1,050
    global keys: 17 key blocks x 2 images x 1 head = 34 thread blocks for
    the 132 SMs of an H100, each walking 67,200 queries. Folding chunks of
    the queries into the batch multiplies the thread blocks by the number of
    chunks. Returns the largest divisor of ``len_q`` (a free view) up to what
    fills ``BLOCKS_PER_SM`` blocks per SM, with chunks of at least
    ``MIN_FOLD_QUERIES``; 1 where none is at least 2.
    """
    key_blocks = -(-len_k // KEYS_PER_BACKWARD_BLOCK)
    wanted = -(-BLOCKS_PER_SM * num_sms // max(1, batch_heads * key_blocks))
    for folds in range(min(wanted, len_q // MIN_FOLD_QUERIES), 1, -1):
        if len_q % folds == 0:
            return folds
    return 1


def folded_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float, folds: int
) -> torch.Tensor:
    """The attention with the queries cut into ``folds`` chunks along the batch.

    Every query still attends to all keys, so the result is the same; keys
    and values are repeated per chunk (their gradients are summed back by
    autograd). ``folds`` must divide the number of queries.
    """
    batch, heads, len_q, head_dims = query.shape
    if len_q % folds:
        raise ValueError(f'folds must divide the {len_q} queries, got {folds}')
    chunks = query.unflatten(2, (folds, len_q // folds)).transpose(1, 2).flatten(0, 1)

    def repeat(tensor):
        # contiguous: with one image the flattened expand is a stride-0 view,
        # which no kernel should have to read (a copy of a few MB at most)
        expanded = tensor.unsqueeze(1).expand(batch, folds, *tensor.shape[1:])
        return expanded.flatten(0, 1).contiguous()

    out = sdpa(chunks, repeat(key), repeat(value), dropout_p)
    return out.unflatten(0, (batch, folds)).transpose(1, 2).flatten(2, 3)


def attention_folds(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """``query_folds`` for a CUDA call whose backward will run; else 1 (the
    CPU kernel and the forward kernels already split the work by query)."""
    if not (
        query.is_cuda
        and query.numel() > 0
        and torch.is_grad_enabled()
        and (query.requires_grad or key.requires_grad or value.requires_grad)
    ):
        return 1
    batch, heads, len_q, _ = query.shape
    num_sms = torch.cuda.get_device_properties(query.device).multi_processor_count
    return query_folds(batch * heads, len_q, key.shape[-2], num_sms)


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v through PyTorch's fused kernels.

    The fused kernels never materialise the (Lq, Lk) map, which at 800x1344
    is 67,200 x 1,050 per head for the stage-1 co-attention. Every DS-Net
    attention qualifies (head size 32, unit stride on the head dimension);
    tests/gpu/test_gpu.py checks it in fp32, fp16 and bf16. Many queries over
    few keys are folded into the batch where that fills the GPU in the
    backward (``attention_folds``).
    """
    folds = attention_folds(query, key, value)
    if folds > 1:
        return folded_attention(query, key, value, dropout_p, folds)
    return sdpa(query, key, value, dropout_p)
