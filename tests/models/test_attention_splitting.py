"""Query folding and key splitting of the DS-Block attentions
(mmdsnet/models/layers/fused_attention.py).

The rule is arithmetic and both rewrites run on the CPU (key splitting on
PyTorch's fused CPU kernel, which returns the log-sum-exp like the CUDA
ones), so they are checked here against plain SDPA; the CUDA kernels' calls
are checked on the meta device here and for values in tests/gpu/test_gpu.py.
"""

import random

import pytest
import torch
import torch.nn.functional as F

import mmdsnet.models.layers.fused_attention as fa
from mmdsnet.models import DSFPN, DSNet
from mmdsnet.models.layers import DSBlock
from mmdsnet.models.layers.ds_block import split_heads, to_tokens
from mmdsnet.models.layers.fused_attention import (
    EFFICIENT_TILES,
    FLASH_TILES,
    AttentionPlan,
    always_plan,
    attention,
    choose_plan,
    folded_attention,
    key_split_attention,
    plan_attention,
    thread_blocks,
)

H100_SMS = 132
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def dsnet_calls(height, width):
    """(stage, name, heads, Lq, Lk) of one block per stage, off a built DSNet-S."""
    model = DSNet('small')
    calls = []
    for stage, (embed, blocks) in enumerate(zip(model.patch_embeds, model.stages)):
        height, width = -(-height // embed.stride[0]), -(-width // embed.stride[1])
        grid = blocks[0].global_size(height, width)
        local, heads = height * width, blocks[0].num_heads
        glob = grid[0] * grid[1]
        calls += [
            (stage + 1, 'global self', heads, glob, glob),
            (stage + 1, 'local q, global kv', heads, local, glob),
            (stage + 1, 'global q, local kv', heads, glob, local),
        ]
    return calls


# ---------------------------------------------------------------- the rule


def test_the_stage_1_co_attention_at_800x1344_is_split_and_folded():
    # local queries over global keys: 34 backward blocks; folded 8 times, 272
    plan = plan_attention(2, 67_200, 1_050, H100_SMS, EFFICIENT_TILES, True)
    assert plan == AttentionPlan(folds=8, splits=1)
    assert thread_blocks(2, 67_200, 1_050, plan, EFFICIENT_TILES) == (2_112, 272)
    # global queries over local keys: 34 forward blocks; keys split 8 times, 272
    plan = plan_attention(2, 1_050, 67_200, H100_SMS, EFFICIENT_TILES, True)
    assert plan == AttentionPlan(folds=1, splits=8)
    assert thread_blocks(2, 1_050, 67_200, plan, EFFICIENT_TILES) == (272, 2_100)


@pytest.mark.parametrize('tiles', [EFFICIENT_TILES, FLASH_TILES], ids=['fp32', 'half'])
def test_every_dsnet_s_call_at_800x1344_fills_two_blocks_per_sm(tiles):
    """The issue's aim, met by every call but the stage-4 self-attention
    (252 x 252: its chunks would fall under 64 rows)."""
    target = 2 * H100_SMS
    short = []
    for stage, name, heads, len_q, len_k in dsnet_calls(800, 1344):
        plan = plan_attention(2 * heads, len_q, len_k, H100_SMS, tiles, True)
        forward, backward = thread_blocks(2 * heads, len_q, len_k, plan, tiles)
        if min(forward, backward) < target:
            short.append((stage, name))
        unplanned = thread_blocks(2 * heads, len_q, len_k, AttentionPlan(), tiles)
        assert forward >= unplanned[0] and backward >= unplanned[1]
    assert short == [(4, 'global self')]


def test_no_rewrite_where_the_grid_is_already_full():
    assert plan_attention(64, 67_200, 1_050, H100_SMS, EFFICIENT_TILES, True) == (1, 1)
    # at 224 with 64 images, stages 3 and 4 are left alone
    for _, _, heads, len_q, len_k in dsnet_calls(224, 224)[6:]:
        assert plan_attention(64 * heads, len_q, len_k, H100_SMS, EFFICIENT_TILES, True) == (1, 1)


def test_without_a_backward_queries_are_never_folded():
    plan = plan_attention(2, 67_200, 1_050, H100_SMS, EFFICIENT_TILES, False)
    assert plan.folds == 1


def test_chunk_counts_divide_the_lengths_and_keep_64_rows():
    rng = random.Random(0)
    for _ in range(2_000):
        batch_heads, len_q, len_k = (
            rng.randint(1, 80),
            rng.randint(1, 70_000),
            rng.randint(1, 70_000),
        )
        tiles = rng.choice([EFFICIENT_TILES, FLASH_TILES])
        plan = plan_attention(batch_heads, len_q, len_k, rng.choice([8, 132]), tiles, True)
        for count, length in zip(plan, (len_q, len_k)):
            assert length % count == 0 and (count == 1 or length // count >= 64)


@pytest.mark.parametrize(
    'len_q,len_k,expected',
    [(1, 1, (1, 1)), (7, 9, (7, 3)), (1_050, 67_200, (2, 2)), (2, 1, (2, 1))],
)
def test_always_splits_every_length_above_one(len_q, len_k, expected):
    assert always_plan(len_q, len_k) == expected


# ---------------------------------------------------------- exactness on CPU


def leaves(batch, heads, len_q, len_k, dtype, head_dims=32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def leaf(length):
        return torch.randn(batch, heads, length, head_dims, generator=gen, dtype=dtype)

    return [t.requires_grad_() for t in (leaf(len_q), leaf(len_k), leaf(len_k))]


def assert_equal_to_sdpa(run, q, k, v):
    """Output and the three gradients of ``run(q, k, v)`` equal plain SDPA's,
    within TOLERANCE relative to each reference's largest entry (absolute
    where that is under 1: with one key the query gradient is rounding noise)."""
    expected = F.scaled_dot_product_attention(q, k, v)
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(expected.dtype)
    expected_all = (expected, *torch.autograd.grad(expected, (q, k, v), grad_out))
    out = run(q, k, v)
    got_all = (out, *torch.autograd.grad(out, (q, k, v), grad_out))
    for name, got, want in zip(('out', 'dq', 'dk', 'dv'), got_all, expected_all):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        scale = want.abs().max().clamp_min(1.0) if want.numel() else 1.0
        error = float((got - want).abs().max() / scale) if want.numel() else 0.0
        assert error <= TOLERANCE[want.dtype], f'{name}: relative error {error:.3g}'


DSNET_SHAPES = sorted(
    {(heads, len_q, len_k) for _, _, heads, len_q, len_k in dsnet_calls(96, 128)}
    | {(heads, len_q, len_k) for _, _, heads, len_q, len_k in dsnet_calls(224, 224)[:6]}
)
ODD_SHAPES = [(1, 1, 1), (3, 1, 7), (2, 13, 1), (4, 37, 41), (8, 97, 89), (6, 64, 128)]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['fp32', 'fp64'])
@pytest.mark.parametrize('heads,len_q,len_k', DSNET_SHAPES + ODD_SHAPES)
def test_split_and_folded_attention_equal_sdpa(heads, len_q, len_k, dtype):
    for batch in (1, 2):
        q, k, v = leaves(batch, heads, len_q, len_k, dtype)
        assert_equal_to_sdpa(lambda q, k, v: attention(q, k, v, 0.0, 'always'), q, k, v)


@pytest.mark.parametrize('splits', [2, 5, 10])
def test_key_split_alone_equals_sdpa(splits):
    q, k, v = leaves(2, 2, 30, 50, torch.float64)
    assert_equal_to_sdpa(lambda q, k, v: key_split_attention(q, k, v, splits), q, k, v)


def test_an_empty_batch_runs_plain():
    q, k, v = leaves(0, 2, 12, 10, torch.float32)
    assert choose_plan(q, k, v, 0.0, 'always') == (1, 1)
    assert_equal_to_sdpa(lambda q, k, v: attention(q, k, v, 0.0, 'always'), q, k, v)


def test_block_views_of_a_packed_buffer_are_split_exactly():
    """q/k/v as a DS-Block hands them over: strided views of one packed buffer."""
    torch.manual_seed(0)
    packed = to_tokens(torch.randn(2, 96, 40, 32).to(memory_format=torch.channels_last))
    q, k, v = (t.detach().requires_grad_() for t in split_heads(packed, 2))
    assert_equal_to_sdpa(lambda q, k, v: attention(q, k, v, 0.0, 'always'), q, k, v)


def test_under_bf16_autocast_the_split_call_returns_what_sdpa_returns():
    q, k, v = leaves(2, 1, 40, 60, torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        expected = F.scaled_dot_product_attention(q, k, v)
        out = attention(q, k, v, 0.0, 'always')
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


# ------------------------------------------------------------------ fallbacks


def test_dropout_and_never_run_plain_sdpa():
    q, k, v = leaves(2, 1, 40, 60, torch.float32)
    assert choose_plan(q, k, v, 0.1, 'always') == (1, 1)
    assert choose_plan(q, k, v, 0.0, 'never') == (1, 1)
    assert choose_plan(q, k, v, 0.0, 'always') == (2, 2)
    # on the CPU 'auto' leaves every call alone
    assert choose_plan(q, k, v, 0.0, 'auto') == (1, 1)


def test_a_torch_whose_private_ops_changed_runs_unsplit(monkeypatch):
    """A changed signature disables key splitting (folding stays: it uses the
    public SDPA) and the call still equals SDPA."""
    monkeypatch.setattr(fa, 'has_signatures', lambda kernel: False)
    q, k, v = leaves(2, 1, 40, 60, torch.float32)
    assert choose_plan(q, k, v, 0.0, 'always') == (2, 1)
    assert_equal_to_sdpa(lambda q, k, v: attention(q, k, v, 0.0, 'always'), q, k, v)


PINNED_SIGNATURES = {
    # torch 2.13's private attention ops: (argument names, number of returns)
    '_scaled_dot_product_flash_attention_for_cpu': (
        'query key value dropout_p is_causal attn_mask scale', 2),
    '_scaled_dot_product_flash_attention_for_cpu_backward': (
        'grad_out query key value out logsumexp dropout_p is_causal attn_mask scale', 3),
    '_scaled_dot_product_efficient_attention': (
        'query key value attn_bias compute_log_sumexp dropout_p is_causal scale', 4),
    '_efficient_attention_backward': (
        'grad_out_ query key value bias out cu_seqlens_q cu_seqlens_k max_seqlen_q '
        'max_seqlen_k logsumexp dropout_p philox_seed philox_offset custom_mask_type '
        'bias_requires_grad scale num_splits_key window_size shared_storage_dqdkdv', 4),
    '_scaled_dot_product_flash_attention': (
        'query key value dropout_p is_causal return_debug_mask scale', 9),
    '_scaled_dot_product_flash_attention_backward': (
        'grad_out query key value out logsumexp cum_seq_q cum_seq_k max_q max_k dropout_p '
        'is_causal philox_seed philox_offset scale', 3),
}  # fmt: skip


def test_the_private_op_signatures_key_splitting_relies_on():
    """Pinned: a torch upgrade that changes them fails here, loudly (at run
    time a changed op only disables key splitting, ``has_signatures``)."""
    used = {op for kernel in (fa.CPU_KERNEL, fa.EFFICIENT_KERNEL, fa.FLASH_KERNEL)
            for op, _, _ in kernel.ops}  # fmt: skip
    assert used == set(PINNED_SIGNATURES)
    for name, (arguments, returns) in PINNED_SIGNATURES.items():
        schema = getattr(torch.ops.aten, name).default._schema
        assert ' '.join(a.name for a in schema.arguments) == arguments, name
        assert len(schema.returns) == returns, name
    for kernel in (fa.CPU_KERNEL, fa.EFFICIENT_KERNEL, fa.FLASH_KERNEL):
        assert fa.has_signatures(kernel), kernel.name


@pytest.mark.parametrize(
    'kernel,dtype,lse_len',
    [(fa.EFFICIENT_KERNEL, torch.float32, 128), (fa.FLASH_KERNEL, torch.float16, 100)],
    ids=['efficient', 'flash'],
)
def test_the_cuda_kernel_calls_on_the_meta_device(kernel, dtype, lse_len):
    """The CUDA routes' arguments, shapes and log-sum-exp layouts (the
    memory-efficient one pads the queries to a multiple of 32), run on
    PyTorch's meta kernels."""
    q, k, v = (
        torch.empty(2, 3, n, 32, device='meta', dtype=dtype, requires_grad=True)
        for n in (100, 70, 70)
    )
    outs, lses, _ = kernel.forward(q.detach(), k.detach(), v.detach())
    assert outs.shape == (2, 3, 100, 32) and lses.shape == (2, 3, lse_len)
    out = key_split_attention(q, k, v, 7, kernel)
    grads = torch.autograd.grad(out, (q, k, v), torch.empty_like(out))
    assert out.shape == q.shape and [g.shape for g in grads] == [q.shape, k.shape, v.shape]


def test_bad_chunk_counts_are_refused():
    q, k, v = leaves(1, 1, 12, 10, torch.float32)
    with pytest.raises(ValueError, match='folds must be a positive divisor of the 12 queries'):
        folded_attention(q, k, v, 0.0, folds=5)
    with pytest.raises(ValueError, match='splits must be a positive divisor of the 10 keys'):
        key_split_attention(q, k, v, 3)
    with pytest.raises(ValueError, match='folds must be a positive divisor'):
        folded_attention(q, k, v, 0.0, folds=0)


@pytest.mark.parametrize(
    'build',
    [
        lambda mode: DSNet('tiny', attn_split=mode),
        lambda mode: DSFPN([64, 128], 64, 2, attn_split=mode),
        lambda mode: DSBlock(64, 1, 8, attn_split=mode),
    ],
    ids=['DSNet', 'DSFPN', 'DSBlock'],
)
def test_attn_split_accepts_three_modes(build):
    for mode in ('auto', 'never', 'always'):
        build(mode)
    with pytest.raises(
        ValueError, match=r"attn_split must be one of \('auto', 'never', 'always'\)"
    ):
        build('sometimes')


# ----------------------------------------------------------- the whole model


def assert_close_to_largest(got, want, tolerance, name):
    error = float(
        (got.detach() - want.detach()).abs().max() / want.detach().abs().max().clamp_min(1e-30)
    )
    assert error <= tolerance, f'{name}: {error:.3g} of the largest entry'


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64], ids=['fp32', 'fp64'])
def test_dsnet_s_with_every_call_split_trains_a_step_equal_to_never(dtype, monkeypatch):
    """attn_split='always' folds and splits all 54 attention calls of
    DSNet-S; its outputs, gradients and the parameters after one SGD step
    equal 'never''s, to rounding relative to each tensor's largest entry."""
    x = torch.randn(2, 3, 128, 192, generator=torch.Generator().manual_seed(0), dtype=dtype)
    plans = []
    choose = fa.choose_plan

    def recording(*args):
        plans.append(choose(*args))
        return plans[-1]

    def train_step(mode):
        torch.manual_seed(0)
        model = DSNet('small', drop_path_rate=0.0, attn_split=mode).to(dtype)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        outs = model(x)
        sum((o * o).mean() for o in outs).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        return outs, grads, dict(model.named_parameters())

    never = train_step('never')
    monkeypatch.setattr(fa, 'choose_plan', recording)
    always = train_step('always')
    assert len(plans) == 3 * sum(DSNet.arch_settings['small']['depths'])
    assert all(plan.folds > 1 and plan.splits > 1 for plan in plans)
    tolerance = TOLERANCE[dtype]
    for i, (want, got) in enumerate(zip(never[0], always[0])):
        assert_close_to_largest(got, want, tolerance, f'output {i}')
    for name, grad in never[1].items():
        assert_close_to_largest(always[1][name], grad, 10 * tolerance, f'grad of {name}')
    for name, param in never[2].items():
        assert_close_to_largest(always[2][name], param, tolerance, name)
