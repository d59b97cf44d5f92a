"""Query folding of the DS-Block attentions (mmdsnet/models/layers/fused_attention.py).

On CUDA, an attention with many queries over few keys has its queries cut
into chunks along the batch so the fused backward kernels start enough thread
blocks. The rule is arithmetic and the folded attention runs on any device,
so both are checked here; tests/gpu/test_gpu.py checks the CUDA kernels.
"""

import pytest
import torch
import torch.nn.functional as F

import mmdsnet.models.layers.fused_attention as fused_attention
from mmdsnet.models import DSNet
from mmdsnet.models.layers.ds_block import split_heads, to_tokens
from mmdsnet.models.layers.fused_attention import folded_attention, query_folds

H100_SMS = 132


def test_the_stage_1_co_attention_at_800x1344_is_folded_sixteen_times():
    # 67,200 local queries over 1,050 global keys, 2 images, 1 head: 17 key
    # blocks x 2 = 34 thread blocks; 16 chunks of 4,200 queries give 544.
    assert query_folds(2, 67_200, 1_050, H100_SMS) == 16
    # stage 2 (2 heads) and stage 3 (5 heads) need fewer chunks for the same fill
    assert query_folds(4, 16_800, 1_050, H100_SMS) == 8
    assert query_folds(10, 4_200, 1_050, H100_SMS) == 4


@pytest.mark.parametrize(
    'batch_heads,len_q,len_k,why',
    [
        (2, 1_050, 67_200, 'few queries: the backward already has a block per 64 keys'),
        (2, 1_050, 1_050, 'the global self-attention'),
        (2, 2_047, 49, 'chunks would fall under 1,024 queries'),
        (64, 67_200, 1_050, 'already 64 x 17 thread blocks'),
        (2, 4_099, 1_050, 'a prime number of queries: no chunks are a view'),
    ],
)
def test_no_folding_where_it_cannot_help(batch_heads, len_q, len_k, why):
    assert query_folds(batch_heads, len_q, len_k, H100_SMS) == 1, why


def test_folds_always_divide_the_queries():
    for len_q in (4_096, 5_000, 9_973 * 2, 67_200, 100_000):
        folds = query_folds(1, len_q, 64, H100_SMS)
        assert len_q % folds == 0 and (folds == 1 or len_q // folds >= 1024)


def block_qkv(heads, len_k, batch=2):
    """q, k, v laid out as a DS-Block hands them over: views of one packed buffer."""
    torch.manual_seed(0)
    packed = to_tokens(torch.randn(batch, 96, 40, 32).to(memory_format=torch.channels_last))
    q, k, v = split_heads(packed, heads)
    return (
        q.detach().requires_grad_(),
        k[:, :, :len_k].detach().requires_grad_(),
        v[:, :, :len_k].detach().requires_grad_(),
    )


@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('heads', [1, 2])
def test_folded_attention_equals_the_attention(heads, batch):
    q, k, v = block_qkv(heads, len_k=50, batch=batch)
    expected = F.scaled_dot_product_attention(q, k, v)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    out = folded_attention(q, k, v, 0.0, folds=4)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    # each query row and its gradient are computed as before; the key and
    # value gradients are sums over the chunks, so only their order changes
    assert torch.equal(out, expected)
    assert torch.equal(grads[0], expected_grads[0])
    for got, want in zip(grads[1:], expected_grads[1:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_folding_takes_the_queries_as_a_view():
    q, _, _ = block_qkv(1, len_k=50)
    chunks = q.unflatten(2, (4, q.shape[2] // 4)).transpose(1, 2).flatten(0, 1)
    assert chunks._base is not None and chunks.data_ptr() == q.data_ptr()


def test_folds_that_do_not_divide_the_queries_are_refused():
    q, k, v = block_qkv(1, len_k=50)
    with pytest.raises(ValueError, match='folds must divide the 1280 queries, got 3'):
        folded_attention(q, k, v, 0.0, folds=3)


def test_a_dsnet_with_every_attention_folded_trains_the_same(monkeypatch):
    """Force folding (CUDA-only otherwise) into every DS-Block attention it fits."""
    torch.manual_seed(0)
    model = DSNet('tiny', drop_path_rate=0.0)
    x = torch.randn(2, 3, 96, 128)

    def run():
        model.zero_grad(set_to_none=True)
        outs = model(x)
        sum((o * o).mean() for o in outs).backward()
        return outs, {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_outs, plain_grads = run()
    folded_calls = []

    def fold_in_four(query, key, value):
        folds = 4 if query.shape[2] % 4 == 0 and query.shape[2] > key.shape[2] else 1
        folded_calls.append(folds)
        return folds

    monkeypatch.setattr(fused_attention, 'attention_folds', fold_in_four)
    folded_outs, folded_grads = run()
    blocks = sum(DSNet.arch_settings['tiny']['depths'])
    assert len(folded_calls) == 3 * blocks and folded_calls.count(4) == blocks
    for plain, folded in zip(plain_outs, folded_outs):
        torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(folded_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
