"""Mixed-precision training steps on CPU: DSNet + DSFPN and the demo Mask R-CNN.

On a GPU, ``tools/train.py --amp`` selects mmengine's ``AmpOptimWrapper``:
forward under autocast, ``GradScaler.scale(loss).backward()``, then
``unscale_`` (with ``clip_grad``), gradient clipping, ``scaler.step`` (skipped
when a gradient is inf/NaN) and ``scaler.update``. What these tests cover on
CPU:

* ``AmpOptimWrapper`` itself, unchanged except that its CUDA assertion is
  passed and its ``GradScaler`` is ``torch.amp.GradScaler('cpu')`` (the CUDA
  one it builds is disabled without a GPU): ``backward``, ``step`` with
  ``clip_grad``, the dynamic scale (a step skipped on overflow, the scale
  halved), a static ``loss_scale`` and the scaler's ``state_dict``.
* bf16 runs inside the wrapper's own ``optim_context`` (mmengine's autocast);
  fp16 through ``torch.autocast('cpu', torch.float16)``, because mmengine's
  autocast allows only bf16 on CPU.

Not covered: CUDA kernels and their fp16/bf16 numerics, cuDNN, the CUDA
scaler's fused unscale kernel, speed. mmcv 2.1's CPU ``nms`` needs float32
boxes; under CUDA autocast ``exp`` runs in float32 so RPN boxes arrive as
float32 there, under CPU autocast they stay reduced; the Mask R-CNN tests cast
the boxes (only) to float32 before mmcv's kernel, as on CUDA. mmcv 2.1's
``roi_align`` has no bfloat16 kernel on CPU nor on CUDA
(``AT_DISPATCH_FLOATING_TYPES_AND_HALF``): the Mask R-CNN configs run it in
float32 through ``FP32SingleRoIExtractor``, which these steps check (every
call of the kernel records its dtypes), with nothing patched around it.
The Mask R-CNN steps sample 16 RoIs per image and the demo's run at 64x64: this
CPU's fp16 and bf16 convolutions and matmuls take slow reference kernels (the
demo's step at 128x128 with 512 RoIs took 28 s in bf16, minutes in fp16), and
neither the RoI count nor the size changes what is checked.
"""

import functools
import importlib

import pytest
import torch
from helpers import REPO_ROOT
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper

from mmdsnet.models.backbones.dsnet import DSNet
from mmdsnet.models.necks.ds_fpn import DSFPN

DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the machine is shared, and oversubscribed CPU threads
    made these steps several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cpu_amp_wrapper(monkeypatch):
    """Build mmengine's AmpOptimWrapper on CPU (see the module docstring)."""
    amp_module = importlib.import_module('mmengine.optim.optimizer.amp_optimizer_wrapper')

    def make(model, dtype, loss_scale='dynamic'):
        with monkeypatch.context() as patch:
            patch.setattr(amp_module, 'is_cuda_available', lambda: True)
            patch.setattr(amp_module, 'GradScaler', functools.partial(torch.amp.GradScaler, 'cpu'))
            wrapper = AmpOptimWrapper(
                optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                loss_scale=loss_scale,
                dtype=dtype,
                clip_grad=dict(max_norm=35, norm_type=2),
            )
        assert wrapper.loss_scaler.is_enabled()
        return wrapper

    return make


def autocast(wrapper, model):
    """The wrapper's own autocast where mmengine allows it on CPU (bf16)."""
    if wrapper.cast_dtype == torch.bfloat16:
        return wrapper.optim_context(model)
    return torch.autocast('cpu', dtype=wrapper.cast_dtype)


def amp_step(model, wrapper, loss_fn):
    """One AmpOptimWrapper step; returns the loss, the parameters before the
    step and whether the scaler took it (the scale is kept)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scale = wrapper.loss_scaler.get_scale()
    with autocast(wrapper, model):
        loss = loss_fn()
    wrapper.backward(loss)
    wrapper.step()  # unscale_ (for clip_grad), clip, scaler.step, update
    return loss, before, wrapper.loss_scaler.get_scale() >= scale


def assert_finite_step(model, loss, before):
    """Finite loss and (unscaled) gradients; every parameter got a gradient,
    stayed finite and the step moved the parameters."""
    assert torch.isfinite(loss), loss
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in params if p.grad is None] == []
    assert [n for n, p in params if not torch.isfinite(p.grad).all()] == []
    assert all(torch.isfinite(p).all() for _, p in params)
    moved = sum(not torch.equal(p, before[n]) for n, p in params)
    assert moved > 0.9 * len(params), f'{moved} of {len(params)} parameters moved'


def dsnet_dsfpn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        DSNet('tiny', drop_path_rate=0.0), DSFPN([64, 128, 320, 512], 64, 5, ds_num_heads=1)
    ).train()


def backbone_loss(model, images, dtypes):
    """The sum of the DSFPN outputs' means (gradients of a realistic size
    for the default scale of 2**16); records the outputs' dtype."""
    outs = model(images)
    dtypes.update(o.dtype for o in outs)
    return sum(o.float().mean() for o in outs)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_dsnet_dsfpn_amp_step(dtype, cpu_amp_wrapper):
    """Dynamically scaled steps run in ``dtype``: a step that overflows is
    skipped (weights kept, scale halved, as fp16 does at the initial 2**16:
    patch_embeds.2's weight gradient), the next one is taken, finite, and its
    gradient points where the float32 one does."""
    images = torch.randn(2, 3, 64, 64)
    model, reference = dsnet_dsfpn(), dsnet_dsfpn()
    wrapper = cpu_amp_wrapper(model, dtype)
    dtypes, skipped = set(), 0
    while True:
        loss, before, stepped = amp_step(
            model, wrapper, lambda: backbone_loss(model, images, dtypes)
        )
        if stepped:
            break
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        wrapper.zero_grad()
        skipped += 1
        assert skipped < 4, 'four overflowing steps in a row'
    assert wrapper.loss_scaler.get_scale() == 2.0 ** (16 - skipped)
    assert dtypes == {dtype}
    assert_finite_step(model, loss, before)

    backbone_loss(reference, images, set()).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
    ref_grads = torch.cat([p.grad.flatten() for p in reference.parameters()]).double()
    # Clipping scales the whole gradient: compare directions.
    assert torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0) > 0.99


def test_fp16_overflow_skips_the_step_and_halves_the_scale(cpu_amp_wrapper):
    """A scale that overflows fp16 gradients: the step is skipped (weights
    unchanged), the scale halves, and the scaler's state goes with the
    wrapper's ``state_dict``."""
    images = torch.randn(2, 3, 64, 64)
    model = dsnet_dsfpn()
    wrapper = cpu_amp_wrapper(model, torch.float16, loss_scale=dict(init_scale=2.0**40))
    _, before, stepped = amp_step(model, wrapper, lambda: backbone_loss(model, images, set()))
    assert not stepped and wrapper.loss_scaler.get_scale() == 2.0**39
    assert any(not torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    state = wrapper.state_dict()
    restored = cpu_amp_wrapper(dsnet_dsfpn(), torch.float16)
    restored.load_state_dict(state)
    assert restored.loss_scaler.get_scale() == 2.0**39


@pytest.fixture
def nms_as_on_cuda(monkeypatch):
    """mmcv's CPU ``nms`` given the float32 boxes that CUDA autocast hands
    it (see the module docstring)."""
    nms_module = importlib.import_module('mmcv.ops.nms')
    nms_kernel = nms_module.ext_module.nms
    monkeypatch.setattr(
        nms_module.ext_module,
        'nms',
        lambda boxes, scores, **kwargs: nms_kernel(boxes.float(), scores, **kwargs),
    )


def mask_rcnn_amp_step(cfg, dtype, sizes, wrapper_of):
    """One AmpOptimWrapper step of the Mask R-CNN ``cfg`` on demo inputs of
    ``sizes`` ([C, H, W] per image), static loss scale 512: the step is taken,
    every loss is finite and every gradient too. Returns the model."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    num_classes = cfg.model.roi_head.bbox_head.num_classes
    data = model.data_preprocessor(
        demo_mm_inputs(len(sizes), sizes, num_classes=num_classes, with_mask=True), training=True
    )
    wrapper = wrapper_of(model, dtype, loss_scale=512.0)
    losses = {}

    def loss_fn():
        losses.update(model(**data, mode='loss'))
        return model.parse_losses(losses)[0]

    loss, before, stepped = amp_step(model, wrapper, loss_fn)
    assert stepped and wrapper.loss_scaler.get_scale() == 512.0
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    for name, value in losses.items():
        values = value if isinstance(value, list) else [value]
        assert all(torch.isfinite(v).all() for v in values), name
    assert_finite_step(model, loss, before)
    return model


@pytest.mark.usefixtures('mmdet_scope', 'nms_as_on_cuda')
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_demo_mask_rcnn_amp_step(dtype, cpu_amp_wrapper, roi_align_dtypes):
    """The demo Mask R-CNN (DS-Net-T + DS-FPN) takes a finite step in
    ``dtype``, its RoIAlign kernel running on float32 features and RoIs."""
    cfg = Config.fromfile(f'{REPO_ROOT}/configs/demo/mask_rcnn_dsnet_t_dsfpn_demo.py')
    cfg.model.train_cfg.rcnn.sampler.num = 16
    model = mask_rcnn_amp_step(cfg, dtype, [[3, 64, 64]] * 2, cpu_amp_wrapper)
    assert model.backbone.stages[0][0].norm1.weight.grad.abs().sum() > 0
    assert roi_align_dtypes and set(roi_align_dtypes) == {(torch.float32, torch.float32)}


@pytest.mark.usefixtures('mmdet_scope', 'nms_as_on_cuda')
def test_mask_rcnn_dsnet_s_bf16_step(cpu_amp_wrapper, roi_align_dtypes):
    """``mask_rcnn_dsnet_s_fpn_1x_coco.py`` (ImageNet init left out) takes a
    finite bf16 step on one 96x128 image, RoIAlign in float32."""
    cfg = Config.fromfile(f'{REPO_ROOT}/configs/mask_rcnn_dsnet_s_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None
    # One image: stochastic depth would drop whole blocks, leaving their
    # parameters without a step.
    cfg.model.backbone.drop_path_rate = 0.0
    cfg.model.train_cfg.rcnn.sampler.num = 16
    mask_rcnn_amp_step(cfg, torch.bfloat16, [[3, 96, 128]], cpu_amp_wrapper)
    assert roi_align_dtypes and set(roi_align_dtypes) == {(torch.float32, torch.float32)}
