"""DS-Net's attention: PyTorch's fused SDPA kernels, fed so that every call
fills the GPU.

The fused kernels give each thread block one tile of queries in the forward
and one tile of keys in the backward. DS-Net's calls are lopsided (at
800x1344 the stage-1 co-attention has 67,200 local tokens against 1,050
global ones), so a call with few queries starves the forward and one with few
keys starves the backward: 34 thread blocks for the 132 SMs of an H100. Two
exact rewrites fix that, chosen per call by ``plan_attention``:

* query folding (``folded_attention``): chunks of the queries become batch
  entries, each attending to all keys; more thread blocks in the backward.
* key splitting (``key_split_attention``): chunks of the keys become batch
  entries, each chunk's output comes with its log-sum-exp and the chunks are
  merged by log-sum-exp (the flash-decoding scheme); more thread blocks in the
  forward. The backward is one fused backward over all keys, fed the merged
  output and log-sum-exp. It calls PyTorch's private aten ops, which return
  the log-sum-exp; their signatures are checked (``key_split_kernel``) and
  pinned by a test.

``attention`` applies them by ``attn_split``: ``'auto'`` (the rule, on CUDA),
``'never'`` (plain SDPA) or ``'always'`` (every call folded and split, on any
device, so tests and benchmarks exercise the rewrites on the CPU).
"""

import functools
import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

aten = torch.ops.aten

#: The accepted values of ``attn_split`` (DSNet, DSFPN, DSBlock).
ATTN_SPLIT_MODES = ('auto', 'never', 'always')
#: Thread blocks per streaming multiprocessor the rule aims at in the
#: forward and in the backward.
BLOCKS_PER_SM = 2
#: A chunk keeps at least one kernel tile of rows.
MIN_CHUNK = 64


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


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float = 0.0):
    """``F.scaled_dot_product_attention``; on CUDA without cuDNN's backend."""
    if query.is_cuda and torch.backends.cuda.cudnn_sdp_enabled():
        backends = cuda_sdpa_backends()
        if backends:
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)


# ---------------------------------------------------------------------------
# The rule


class AttentionPlan(NamedTuple):
    """How one attention call is run: ``folds`` query chunks and ``splits``
    key chunks folded into the batch (1 and 1: plain SDPA)."""

    folds: int = 1
    splits: int = 1


class TileSizes(NamedTuple):
    """Rows per thread block of the fused kernels PyTorch picks on sm80+ for
    DS-Net's head size of 32: queries per forward block, keys per backward
    block (memory-efficient fp32 ``64x64`` kernels, flash ``128x128``)."""

    forward_queries: int
    backward_keys: int


EFFICIENT_TILES = TileSizes(64, 64)
FLASH_TILES = TileSizes(128, 128)


def thread_blocks(
    batch_heads: int, len_q: int, len_k: int, plan: AttentionPlan, tiles: TileSizes
) -> Tuple[int, int]:
    """(forward, backward) thread blocks of a call run by ``plan``.

    Forward: one block per (batch entry, head, tile of queries); backward
    (flash and memory-efficient alike): one per (batch entry, head, tile of
    keys), each walking all queries of its batch entry. A key-split call's
    backward is one backward over all keys of the query-folded batch.
    """
    batch_heads *= plan.folds
    forward = batch_heads * plan.splits * -(-(len_q // plan.folds) // tiles.forward_queries)
    backward = batch_heads * -(-len_k // tiles.backward_keys)
    return forward, backward


def _chunk_count(length: int, blocks: int, target: int) -> int:
    """The smallest divisor of ``length`` that multiplies ``blocks`` up to
    ``target``, with chunks of at least ``MIN_CHUNK`` rows; the largest such
    divisor when none reaches it; 1 when the blocks suffice or none exists."""
    if blocks >= target:
        return 1
    needed = -(-target // blocks)
    divisors = [d for d in range(2, length // MIN_CHUNK + 1) if length % d == 0]
    if not divisors:
        return 1
    return next((d for d in divisors if d >= needed), divisors[-1])


@functools.lru_cache(maxsize=4096)
def plan_attention(
    batch_heads: int, len_q: int, len_k: int, num_sms: int, tiles: TileSizes, backward: bool
) -> AttentionPlan:
    """The ``'auto'`` rule: a pure function of the shapes and the SM count.

    Aims at ``BLOCKS_PER_SM`` thread blocks per SM: queries are folded when a
    backward will run on too few key tiles, then keys are split when the
    forward has too few query tiles. Chunk counts divide the lengths (the
    folded queries are a view) and keep at least ``MIN_CHUNK`` rows.
    """
    target = BLOCKS_PER_SM * num_sms
    folds = 1
    if backward:
        _, backward_blocks = thread_blocks(batch_heads, len_q, len_k, AttentionPlan(), tiles)
        folds = _chunk_count(len_q, backward_blocks, target)
    forward_blocks, _ = thread_blocks(batch_heads, len_q, len_k, AttentionPlan(folds), tiles)
    return AttentionPlan(folds, _chunk_count(len_k, forward_blocks, target))


def _smallest_divisor(length: int) -> int:
    """The smallest divisor of ``length`` above 1 (1 for a length of 1)."""
    return next((d for d in range(2, math.isqrt(length) + 1) if length % d == 0), length)


def always_plan(len_q: int, len_k: int) -> AttentionPlan:
    """``'always'``: at least two chunks of queries and of keys wherever a
    length has more than one row (a prime length gives chunks of one row)."""
    return AttentionPlan(_smallest_divisor(len_q), _smallest_divisor(len_k))


# ---------------------------------------------------------------------------
# The fused kernels that return a log-sum-exp


class KeySplitKernel(NamedTuple):
    """A fused forward that returns its log-sum-exp and the matching backward.

    ``forward(q, k, v) -> (out, lse, state)``; ``backward(grad, q, k, v, out,
    lse, state) -> (dq, dk, dv)``; ``lse`` is float32 (float64 for float64
    inputs) of shape (B, H, >= Lq), in the layout the forward returns.
    ``ops``: (aten op, the leading arguments passed to it, its number of
    returns) for each op called.
    """

    name: str
    forward: Callable
    backward: Callable
    ops: Tuple[Tuple[str, Tuple[str, ...]], ...]


def _cpu_forward(q, k, v):
    out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    return out, lse, ()


def _cpu_backward(grad, q, k, v, out, lse, state):
    return aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad, q, k, v, out, lse, 0.0, False
    )


def _efficient_forward(q, k, v):
    out, lse, seed, offset = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
    return out, lse, (seed, offset)


def _efficient_backward(grad, q, k, v, out, lse, state):
    # the (B, L, H, d) op beneath the SDPA backward, which takes no bias
    grads = aten._efficient_attention_backward(
        *(t.transpose(1, 2) for t in (grad, q, k, v)),
        None,
        out.transpose(1, 2),
        None,
        None,
        q.shape[2],
        k.shape[2],
        lse,
        0.0,
        *state,
        0,
        False,
    )
    return tuple(g.transpose(1, 2) for g in grads[:3])


def _flash_forward(q, k, v):
    out, lse, _, _, _, _, rng_state, unused, _ = aten._scaled_dot_product_flash_attention(q, k, v)
    return out, lse, (rng_state, unused)


def _flash_backward(grad, q, k, v, out, lse, state):
    return aten._scaled_dot_product_flash_attention_backward(
        grad, q, k, v, out, lse, None, None, q.shape[2], k.shape[2], 0.0, False, *state
    )


_QKV = ('query', 'key', 'value')
CPU_KERNEL = KeySplitKernel(
    'cpu_flash',
    _cpu_forward,
    _cpu_backward,
    (
        ('_scaled_dot_product_flash_attention_for_cpu', _QKV, 2),
        (
            '_scaled_dot_product_flash_attention_for_cpu_backward',
            ('grad_out', *_QKV, 'out', 'logsumexp', 'dropout_p', 'is_causal'),
            3,
        ),
    ),
)
EFFICIENT_KERNEL = KeySplitKernel(
    'efficient',
    _efficient_forward,
    _efficient_backward,
    (
        ('_scaled_dot_product_efficient_attention', (*_QKV, 'attn_bias', 'compute_log_sumexp'), 4),
        (
            '_efficient_attention_backward',
            ('grad_out_', *_QKV, 'bias', 'out', 'cu_seqlens_q', 'cu_seqlens_k')
            + ('max_seqlen_q', 'max_seqlen_k', 'logsumexp', 'dropout_p', 'philox_seed')
            + ('philox_offset', 'custom_mask_type', 'bias_requires_grad'),
            4,
        ),
    ),
)
FLASH_KERNEL = KeySplitKernel(
    'flash',
    _flash_forward,
    _flash_backward,
    (
        ('_scaled_dot_product_flash_attention', _QKV, 9),
        (
            '_scaled_dot_product_flash_attention_backward',
            ('grad_out', *_QKV, 'out', 'logsumexp', 'cum_seq_q', 'cum_seq_k', 'max_q')
            + ('max_k', 'dropout_p', 'is_causal', 'philox_seed', 'philox_offset'),
            3,
        ),
    ),
)


@functools.lru_cache(maxsize=None)
def has_signatures(kernel: KeySplitKernel) -> bool:
    """Whether this torch's aten ops take the leading arguments ``kernel``
    passes, by name and order, and return as many values as it unpacks
    (private ops may change between releases)."""
    for op_name, leading, returns in kernel.ops:
        op = getattr(aten, op_name, None)
        if op is None:
            return False
        schema = op.default._schema
        names = tuple(arg.name for arg in schema.arguments)
        if names[: len(leading)] != leading or len(schema.returns) != returns:
            return False
    return True


def key_split_kernel(query: torch.Tensor) -> Optional[KeySplitKernel]:
    """The kernel a key-split call of ``query``'s device and dtype runs on, or
    None where there is none (then the call runs unsplit).

    CPU: the fused CPU kernel (SDPA's flash backend there). CUDA: flash for
    fp16/bf16 on sm80+ where enabled, else memory-efficient where enabled.
    Restrictions set with ``sdpa_kernel`` are honoured.
    """
    if query.device.type == 'cpu':
        if not torch.backends.cuda.flash_sdp_enabled():  # the CPU's fused kernel's switch
            return None
        kernel = CPU_KERNEL
    elif query.is_cuda:
        flash = (
            query.dtype in (torch.float16, torch.bfloat16)
            and torch.backends.cuda.flash_sdp_enabled()
            and torch.cuda.get_device_capability(query.device) >= (8, 0)
        )
        if flash:
            kernel = FLASH_KERNEL
        elif torch.backends.cuda.mem_efficient_sdp_enabled():
            kernel = EFFICIENT_KERNEL
        else:
            return None
    else:
        return None
    return kernel if has_signatures(kernel) else None


# ---------------------------------------------------------------------------
# The rewrites


def merge_by_logsumexp(
    outs: torch.Tensor, lses: torch.Tensor, len_q: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge per-chunk attention outputs (B, S, H, Lq, d) with their
    log-sum-exps (B, S, H, >= Lq) into the output over all keys (B, H, Lq, d)
    and its log-sum-exp (B, H, >= Lq): out = sum_s exp(lse_s - lse) out_s."""
    lse = torch.logsumexp(lses, dim=1)
    weights = torch.exp(lses[..., :len_q] - lse[:, None, :, :len_q])
    out = (weights.unsqueeze(-1) * outs.to(weights.dtype)).sum(dim=1)
    return out.to(outs.dtype), lse


class _KeySplitAttention(torch.autograd.Function):
    """Forward over key chunks merged by log-sum-exp; one fused backward."""

    @staticmethod
    def forward(ctx, query, key, value, splits: int, kernel: KeySplitKernel):
        batch, heads, len_q, _ = query.shape
        len_k = key.shape[2]

        def chunks(tensor):  # (B, H, Lk, d) -> (B * S, H, Lk / S, d)
            per_split = tensor.unflatten(2, (splits, len_k // splits)).transpose(1, 2)
            return per_split.flatten(0, 1)

        queries = query.unsqueeze(1).expand(batch, splits, *query.shape[1:]).flatten(0, 1)
        outs, lses, state = kernel.forward(queries, chunks(key), chunks(value))
        out, lse = merge_by_logsumexp(
            outs.unflatten(0, (batch, splits)), lses.unflatten(0, (batch, splits)), len_q
        )
        # the backward reads the log-sum-exp in the layout its forward returns
        # (a chunk's entry holds as many values as an entry of the whole call)
        layout = torch.empty_strided(lse.shape, lses.stride(), dtype=lse.dtype, device=lse.device)
        lse = layout.copy_(lse)
        ctx.kernel, ctx.state = kernel, state
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        grads = ctx.kernel.backward(grad_out.contiguous(), query, key, value, out, lse, ctx.state)
        return (*grads, None, None)


def key_split_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    splits: int,
    kernel: Optional[KeySplitKernel] = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the keys cut into ``splits`` chunks
    folded into the batch (no dropout). ``splits`` must divide the keys;
    ``kernel`` defaults to ``key_split_kernel(query)``."""
    len_k = key.shape[2]
    if splits < 1 or len_k % splits:
        raise ValueError(f'splits must be a positive divisor of the {len_k} keys, got {splits}')
    kernel = kernel or key_split_kernel(query)
    if kernel is None:
        raise RuntimeError(
            f'no fused kernel returns a log-sum-exp for {query.dtype} on {query.device} '
            'in this torch; run the call unsplit'
        )
    return _KeySplitAttention.apply(query, key, value, splits, kernel)


def folded_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout_p: float,
    folds: int,
    attend: Optional[Callable] = None,
) -> torch.Tensor:
    """The attention with the queries cut into ``folds`` chunks along the batch.

    Every query still attends to all keys, so the result is the same; keys
    and values are repeated per chunk (their gradients are summed back by
    autograd). ``folds`` must divide the number of queries. ``attend(q, k,
    v)`` runs the folded call (default: ``sdpa`` with ``dropout_p``).
    """
    batch, heads, len_q, head_dims = query.shape
    if folds < 1 or len_q % folds:
        raise ValueError(f'folds must be a positive divisor of the {len_q} queries, got {folds}')
    chunks = query.unflatten(2, (folds, len_q // folds)).transpose(1, 2).flatten(0, 1)

    def repeat(tensor):
        # contiguous: with one image the flattened expand is a stride-0 view,
        # which no kernel should have to read (a copy of a few MB at most)
        expanded = tensor.unsqueeze(1).expand(batch, folds, *tensor.shape[1:])
        return expanded.flatten(0, 1).contiguous()

    attend = attend or functools.partial(sdpa, dropout_p=dropout_p)
    out = attend(chunks, repeat(key), repeat(value))
    return out.unflatten(0, (batch, folds)).transpose(1, 2).flatten(2, 3)


def _tiles(query: torch.Tensor) -> TileSizes:
    return FLASH_TILES if query.dtype in (torch.float16, torch.bfloat16) else EFFICIENT_TILES


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _needs_backward(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def choose_plan(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float, split: str
) -> AttentionPlan:
    """The plan of one call under ``attn_split=split``: plain SDPA with
    dropout, for an empty batch, or where no kernel returns a log-sum-exp
    (then no key split)."""
    if split not in ATTN_SPLIT_MODES:
        raise ValueError(f'attn_split must be one of {ATTN_SPLIT_MODES}, got {split!r}')
    if split == 'never' or dropout_p > 0 or query.numel() == 0 or key.numel() == 0:
        return AttentionPlan()
    batch, heads, len_q, _ = query.shape
    len_k = key.shape[2]
    if split == 'always':
        plan = always_plan(len_q, len_k)
    elif query.is_cuda:
        plan = plan_attention(
            batch * heads,
            len_q,
            len_k,
            _sm_count(query.device.index if query.device.index is not None else 0),
            _tiles(query),
            _needs_backward(query, key, value),
        )
    else:
        return AttentionPlan()
    if plan.splits > 1 and key_split_kernel(query) is None:
        plan = plan._replace(splits=1)
    return plan


def _autocast_inputs(tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """Cast to the autocast dtype as SDPA's autocast rule does (the private
    ops have no autocast rule of their own)."""
    device = tensors[0].device.type
    if device in ('cpu', 'cuda') and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    return tensors


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout_p: float,
    split: str = 'auto',
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v through PyTorch's fused kernels.

    The fused kernels never materialise the (Lq, Lk) map, which at 800x1344
    is 67,200 x 1,050 per head for the stage-1 co-attention. Every DS-Net
    attention qualifies (head size 32, unit stride on the head dimension);
    tests/gpu/test_gpu.py checks it in fp32, fp16 and bf16. ``split``
    (``attn_split``) chooses the folding and key splitting (``choose_plan``).
    """
    return planned_attention(
        query, key, value, dropout_p, choose_plan(query, key, value, dropout_p, split)
    )


def planned_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout_p: float,
    plan: AttentionPlan,
) -> torch.Tensor:
    """The attention run by ``plan``: ``folds`` query chunks around plain SDPA
    or around ``splits`` key chunks merged by log-sum-exp (no dropout then)."""
    if plan.splits > 1:
        query, key, value = _autocast_inputs((query, key, value))
        attend = functools.partial(key_split_attention, splits=plan.splits)
    else:
        attend = functools.partial(sdpa, dropout_p=dropout_p)
    if plan.folds > 1:
        return folded_attention(query, key, value, dropout_p, plan.folds, attend)
    return attend(query, key, value)
