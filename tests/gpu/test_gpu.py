"""GPU tests: run wherever CUDA is available, skipped with the reason elsewhere.

DS-Net on CUDA against the CPU, every DS-Block attention on a fused SDPA
kernel in fp32/fp16/bf16, an AMP Mask R-CNN training step through mmengine's
AmpOptimWrapper, mmcv's CUDA ops against its CPU kernels, and a one-process
NCCL ``tools/dist_train.sh --amp`` run. ``make gpu-check`` runs them with
``-m gpu``.
"""

import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT, free_port
from torch.nn.attention import sdpa_kernel

from mmdsnet.analysis.attention_backends import FUSED_BACKENDS, describe_sdpa_calls
from mmdsnet.models import DSFPN, DSNet
from mmdsnet.models.layers.fused_attention import attention, choose_plan, sdpa

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU'),
]
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


@pytest.fixture
def exact_fp32():
    """fp32 matmuls and convolutions without TF32, so CUDA can be held to the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize('arch', ['tiny', 'small'])
def test_dsnet_on_cuda_matches_the_cpu(arch, exact_fp32):
    """Forward outputs and backward gradients agree to 1e-4 of their scale (fp32, no TF32)."""
    torch.manual_seed(0)
    model = DSNet(arch, drop_path_rate=0.0)
    model.eval()
    x = torch.randn(2, 3, 224, 288)

    def run(device):
        net = model.to(device)
        net.zero_grad(set_to_none=True)
        outs = net(x.to(device))
        sum((o * o).mean() for o in outs).backward()
        grads = {n: p.grad.detach().cpu() for n, p in net.named_parameters()}
        return [o.detach().cpu() for o in outs], grads

    cpu_outs, cpu_grads = run('cpu')
    cuda_outs, cuda_grads = run('cuda')
    for level, (a, b) in enumerate(zip(cuda_outs, cpu_outs)):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-4 * scale, f'stage {level + 1} output'
    for name, grad in cpu_grads.items():
        scale = grad.abs().max().item() or 1.0
        diff = (cuda_grads[name] - grad).abs().max().item()
        assert diff <= 1e-3 * scale, f'{name}: {diff:.3g} vs scale {scale:.3g}'


@pytest.mark.parametrize('precision', list(DTYPES))
@pytest.mark.parametrize('setting', [(2, 224, 224), (1, 800, 1344)], ids=['224', '800x1344'])
@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_every_attention_runs_on_a_fused_kernel(arch, setting, precision):
    """With the math backend switched off, forward and backward still run; left to
    itself DS-Net picks flash (fp16/bf16) or memory-efficient attention (fp32)."""
    batch, height, width = setting
    model = DSNet(arch, drop_path_rate=0.0).cuda()
    x = torch.randn(batch, 3, height, width, device='cuda')
    dtype = DTYPES[precision]
    autocast = torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32)
    with sdpa_kernel(list(FUSED_BACKENDS)), autocast:
        outs = model(x)
        sum(o.float().mean() for o in outs).backward()
    model.eval()
    for block in model.modules():  # every call through SDPA's selector, as the tool reports it
        if hasattr(block, 'attn_split'):
            block.attn_split = 'never'
    calls = describe_sdpa_calls(model, x, None if precision == 'fp32' else dtype)
    # DS-Net's own choice (mmdsnet.models.layers.fused_attention): no cuDNN, no math
    expected = 'efficient' if precision == 'fp32' else 'flash'
    assert calls and {c['backend'] for c in calls} == {expected}


@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'bf16'])
@pytest.mark.parametrize(
    'len_q,len_k,rewrite',
    [(67_200, 1_050, 'folds'), (1_050, 67_200, 'splits'), (1_050, 1_050, 'both')],
    ids=['local-q-folded', 'global-q-split', 'global-self-both'],
)
def test_the_stage_1_attentions_are_rewritten_and_equal_on_cuda(
    len_q, len_k, rewrite, precision, batch
):
    """The stage-1 attentions at 800x1344 (1 head) under attn_split='auto':
    queries folded, keys split (merged by log-sum-exp on the fused CUDA
    kernels), or both; same output and gradients as one plain call."""
    dtype = DTYPES[precision]
    gen = torch.Generator(device='cuda').manual_seed(0)

    def leaf(length):
        return torch.randn(batch, 1, length, 32, device='cuda', dtype=dtype, generator=gen)

    q, k, v = (t.requires_grad_() for t in (leaf(len_q), leaf(len_k), leaf(len_k)))
    plan = choose_plan(q, k, v, 0.0, 'auto')
    expected_rewrite = dict(folds=plan.folds > 1, splits=plan.splits > 1)
    if rewrite == 'both':
        assert plan.folds > 1 and plan.splits > 1, plan
    else:
        assert expected_rewrite[rewrite], plan
    expected = sdpa(q, k, v, 0.0)
    grad_out = torch.randn(expected.shape, device='cuda', dtype=dtype, generator=gen)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    out = attention(q, k, v, 0.0, 'auto')
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    tolerance = dict(rtol=1e-3, atol=1e-4) if precision == 'fp32' else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, expected, **tolerance)
    for name, got, want in zip('qkv', grads, expected_grads):
        torch.testing.assert_close(got, want, **tolerance, msg=f'grad of {name}')


@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_dsnet_s_trains_the_same_with_and_without_attn_split_on_cuda(precision, exact_fp32):
    """DSNet-S at 512x640, 2 images: 'auto' (rewrites on) against 'never'."""
    dtype = DTYPES[precision]
    x = torch.randn(2, 3, 512, 640, device='cuda')
    results = {}
    for mode in ('never', 'auto'):
        torch.manual_seed(0)
        model = DSNet('small', drop_path_rate=0.0, attn_split=mode).cuda()
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            outs = model(x)
        sum(o.float().square().mean() for o in outs).backward()
        results[mode] = (
            [o.float() for o in outs],
            {n: p.grad.float() for n, p in model.named_parameters()},
        )
    tolerance = dict(rtol=1e-3, atol=1e-4) if precision == 'fp32' else dict(rtol=5e-2, atol=5e-2)
    for got, want in zip(results['auto'][0], results['never'][0]):
        torch.testing.assert_close(got, want, **tolerance)
    for name, want in results['never'][1].items():
        got = results['auto'][1][name]
        scale = want.abs().max().clamp_min(1e-12)
        assert float((got - want).abs().max() / scale) < 1e-2, name


@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'bf16'])
def test_gradients_keep_their_parameters_strides_on_cuda(precision):
    """DDP warns 'Grad strides do not match bucket view strides' otherwise
    (seen on the H100 before match_grad_strides landed)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        DSNet('tiny', drop_path_rate=0.0), DSFPN([64, 128, 320, 512], 256, 5)
    ).cuda()
    model.train()
    dtype = DTYPES[precision]
    x = torch.randn(2, 3, 256, 320, device='cuda')
    with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
        outs = model(x)
    sum(o.float().mean() for o in outs).backward()
    mismatched = {
        name: (tuple(p.grad.stride()), tuple(p.stride()))
        for name, p in model.named_parameters()
        if p.grad is not None and p.grad.stride() != p.stride()
    }
    assert not mismatched, mismatched


@pytest.mark.integration
@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_amp_mask_rcnn_training_step_is_finite(mmdet_scope, dtype):
    """Steps through mmengine's AmpOptimWrapper (dynamic scale) in fp16 and in
    bf16 (which mmcv's RoIAlign has no kernel for: the config's fp32 RoI
    extractor makes it possible): losses and weights stay finite and the
    weights move. The first steps may overflow at the initial scale of 2**16
    and be skipped (the scale halves), so up to ten are taken until one is
    applied."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.optim import AmpOptimWrapper

    from mmdsnet.utils import load_config_file

    cfg = load_config_file(osp.join(REPO_ROOT, 'configs/mask_rcnn_dsnet_s_dsfpn_1x_coco.py'))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).cuda()
    model.train()
    wrapper = AmpOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4), loss_scale='dynamic', dtype=dtype
    )
    packed = demo_mm_inputs(2, [[3, 512, 672]] * 2, num_items=[6, 6], with_mask=True)
    data = model.data_preprocessor(packed, training=True)
    before = model.backbone.stages[0][0].conv1.weight.detach().clone()
    for _ in range(10):
        with wrapper.optim_context(model):
            losses = model(data['inputs'].cuda(), [s.cuda() for s in data['data_samples']], 'loss')
        loss, _ = model.parse_losses(losses)
        assert torch.isfinite(loss), losses
        wrapper.update_params(loss)
        if not torch.equal(before, model.backbone.stages[0][0].conv1.weight):
            break
    else:
        raise AssertionError(f'no step applied in 10; loss scale {wrapper.loss_scaler.get_scale()}')
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name


def test_mmcv_cuda_ops_match_the_cpu():
    """nms, RoIAlign (forward, backward), batched_nms and sigmoid focal loss."""
    from mmcv.ops import batched_nms, sigmoid_focal_loss
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    verify = subprocess.run(
        [sys.executable, 'tools/install/cuda_build_env.py', '--verify-ops', 'cuda'],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0 and 'verified' in verify.stdout, verify.stderr
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(3000, 2, generator=gen) * 500
    boxes = torch.cat([xy, xy + 10 + torch.rand(3000, 2, generator=gen) * 80], 1)
    scores = torch.rand(3000, generator=gen)
    labels = torch.randint(0, 5, (3000,), generator=gen)
    cfg = dict(type='nms', iou_threshold=0.5)
    _, keep_cpu = batched_nms(boxes, scores, labels, cfg)
    _, keep_gpu = batched_nms(boxes.cuda(), scores.cuda(), labels.cuda(), cfg)
    assert torch.equal(keep_gpu.cpu(), keep_cpu)
    logits = torch.randn(500, 80, generator=gen)
    targets = torch.randint(0, 81, (500,), generator=gen)
    one_hot = torch.nn.functional.one_hot(targets, 81)[:, :80].float()
    expected = py_sigmoid_focal_loss(logits, one_hot, gamma=2.0, alpha=0.25, reduction='sum')
    got = sigmoid_focal_loss(logits.cuda(), targets.cuda(), 2.0, 0.25, None, 'sum')
    assert torch.allclose(got.cpu(), expected, rtol=1e-4)


@pytest.mark.integration
def test_dist_train_nccl_amp_two_epochs(tmp_path):
    """tools/dist_train.sh with one process: NCCL, --amp, two epochs, finite losses."""
    data = tmp_path / 'data'
    subprocess.run(
        [sys.executable, 'tools/demo/make_demo_data.py', '--out', str(data)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    root = f'{data}/coco/'
    work_dir = tmp_path / 'work'
    options = [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.ann_file={root}annotations/instances_val.json',
        f'test_evaluator.ann_file={root}annotations/instances_val.json',
        'train_cfg.max_epochs=2',
        'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=1',
    ]
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', 'configs/demo/mask_rcnn_dsnet_t_dsfpn_demo.py', '1',
         '--amp', '--work-dir', str(work_dir), '--cfg-options', *options],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert (work_dir / 'epoch_2.pth').is_file()
    assert "backend='nccl'" in output, 'the run was not configured for NCCL'
    assert 'AmpOptimWrapper' in output
    losses = [float(v) for v in re.findall(r' loss: ([-\d.naif]+)', output)]
    assert losses and all(v == v and abs(v) != float('inf') for v in losses), losses
