"""What the benchmark times: its backbones and detectors, and one case per
model, input and mode (tools/analysis_tools/benchmark.py parses the command
line, runs the cases and reports them).

A :class:`Case` builds its model on first use and runs one step per call, so
the tool can interleave the cases of a group trial by trial after warm-up.
The detector entries name this repository's configs by path (a source
checkout, as the tool runs from) and mmdet's by ``mmdet::``.
"""

import os.path as osp
import time
from typing import Callable, Dict, List

import torch

from ..models import DSNet
from ..testing import reference_for
from .inputs import build_detector, detector_batch, parse_setting
from .memory import saved_activations_mb

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


class UnfusedDSNet(torch.nn.Module):
    """The public reference formulation (explicit attention maps) as a backbone."""

    def __init__(self, arch='small'):
        super().__init__()
        self.net = reference_for(arch)
        del self.net.head, self.net.norm

    def forward(self, x):
        return self.net.features(x)


def mmdet_backbone(cfg: dict) -> Callable[[], torch.nn.Module]:
    """A builder of the mmdet backbone ``cfg``, called when its case first runs."""

    def build():
        from mmdet.registry import MODELS
        from mmengine.registry import init_default_scope

        init_default_scope('mmdet')
        return MODELS.build(cfg)

    return build


BACKBONES: Dict[str, Callable[[], torch.nn.Module]] = {
    'DS-Net-S': lambda: DSNet('small', drop_path_rate=0.0),
    'DS-Net-S unfused': lambda: UnfusedDSNet('small'),
    'DS-Net-S NCHW': lambda: DSNet('small', drop_path_rate=0.0, channels_last=False),
    'DS-Net-S with_cp': lambda: DSNet('small', drop_path_rate=0.0, with_cp=True),
    'DS-Net-T': lambda: DSNet('tiny', drop_path_rate=0.0),
    'DS-Net-B': lambda: DSNet('base', drop_path_rate=0.0),
    'ResNet-50': mmdet_backbone(dict(type='ResNet', depth=50, norm_eval=False)),
    'Swin-T': mmdet_backbone(
        dict(
            type='SwinTransformer',
            embed_dims=96,
            depths=(2, 2, 6, 2),
            num_heads=(3, 6, 12, 24),
            window_size=7,
            drop_path_rate=0.0,
        )
    ),
    'PVT-Small': mmdet_backbone(
        dict(type='PyramidVisionTransformer', num_layers=[3, 4, 6, 3], drop_path_rate=0.0)
    ),
    'PVTv2-b2': mmdet_backbone(
        dict(
            type='PyramidVisionTransformerV2',
            embed_dims=64,
            num_layers=[3, 4, 6, 3],
            drop_path_rate=0.0,
        )
    ),
}
BACKBONE_SHAPES = {'224 b8': (8, 224, 224), '800x1344 b1': (1, 800, 1344)}
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


# name -> (config, backbone overrides); R-50 first, so the ratios read against it
DETECTORS = {
    'MaskRCNN R-50+FPN': ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', {}),
    'MaskRCNN DS-Net-S+FPN': (osp.join(ROOT, 'configs/mask_rcnn_dsnet_s_fpn_1x_coco.py'), {}),
    'MaskRCNN DS-Net-S+DS-FPN': (osp.join(ROOT, 'configs/mask_rcnn_dsnet_s_dsfpn_1x_coco.py'), {}),
    'MaskRCNN Swin-T+FPN': ('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', {}),
    'MaskRCNN DS-Net-S+FPN with_cp': (
        osp.join(ROOT, 'configs/mask_rcnn_dsnet_s_fpn_1x_coco.py'),
        dict(with_cp=True),
    ),
    # like-for-like with R-50's config, which freezes the stem and stage 1
    'MaskRCNN DS-Net-S+FPN frozen_stages=1': (
        osp.join(ROOT, 'configs/mask_rcnn_dsnet_s_fpn_1x_coco.py'),
        dict(frozen_stages=1),
    ),
}


def sync(device):
    """Wait for the work queued on a GPU, so that a timing covers it."""
    if device.type == 'cuda':
        torch.cuda.synchronize()


class Case:
    """One timed thing: builds its model lazily and runs one step."""

    def __init__(self, group, name, setting, build, step):
        self.group, self.name, self.setting = group, name, setting
        self.build, self.step = build, step
        self.state = None
        self.times: List[float] = []
        self.memory_mb = None
        self.saved_mb = None  # activations kept for backward (train cases)

    def prepare(self, device):
        if self.state is None:
            self.state = self.build(device)

    def run_once(self, device):
        self.prepare(device)
        sync(device)
        start = time.perf_counter()
        self.step(self.state)
        sync(device)
        return time.perf_counter() - start


def backbone_case(name, setting, mode):
    batch, height, width = parse_setting(setting)

    def build(device):
        model = BACKBONES[name]().to(device)
        model.train(mode == 'train')
        return model, torch.randn(batch, 3, height, width, device=device), device

    def step(state):
        model, x, device = state
        if mode == 'eval':
            with torch.no_grad():
                model(x)
        else:
            model.zero_grad(set_to_none=True)
            sum(o.float().sum() for o in model(x)).backward()

    case = Case(f'backbone {setting} {mode}', name, setting, build, step)
    if mode == 'train':

        def measure_saved(device):
            case.prepare(device)
            return saved_activations_mb(*case.state[:2])

        case.measure_saved = measure_saved
    return case


def detector_case(name, mode, precision='fp32', size='800x1333'):
    """One Mask R-CNN step on 2 images of ``size``: a training iteration
    (forward, backward, AdamW step) or inference. ``precision='amp'`` runs
    forward and loss under fp16 autocast with a dynamic loss scaler, as
    ``--amp`` (mmengine's AmpOptimWrapper) does."""
    height, width = (int(v) for v in size.split('x'))
    amp = precision == 'amp'

    def build(device):
        model = build_detector(*DETECTORS[name]).to(device)
        model.train(mode == 'train')
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == 'train' else None
        scaler = torch.amp.GradScaler(device.type, enabled=amp) if mode == 'train' else None
        return model, detector_batch(model, device, height, width), optimizer, scaler, device

    def step(state):
        model, data, optimizer, scaler, device = state
        autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp)
        if mode == 'train':
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss, _ = model.parse_losses(model(**data, mode='loss'))
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            with torch.no_grad(), autocast:
                model(**data, mode='predict')

    case = Case(f'Mask R-CNN 2x{size} {mode} {precision}', name, f'{size} b2', build, step)
    case.batch = 2
    return case


def throughput_case(name, precision, setting='224 b64'):
    """Inference images/s of a backbone, fp32 or under bf16/fp16 autocast."""
    batch, height, width = parse_setting(setting)
    dtype = PRECISIONS[precision]

    def build(device):
        model = BACKBONES[name]().to(device)
        model.eval()  # not chained: mmdet's ResNet.train() returns None
        return model, torch.randn(batch, 3, height, width, device=device), device

    def step(state):
        model, x, device = state
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x)

    case = Case(f'throughput {setting} {precision}', name, setting, build, step)
    case.batch = batch
    return case


def make_cases(
    suites,
    device,
    names,
    settings,
    modes=('eval', 'train'),
    detectors=DETECTORS,
    precisions=('fp32', 'bf16', 'fp16'),
    det_precisions=('fp32',),
    det_size='800x1333',
    throughput_setting='224 b64',
):
    """The cases of the chosen suites, in the order they are grouped and run.

    The benchmark tool leaves ``throughput`` out on a CPU unless
    ``--throughput-setting`` is given (the gpu-check's CPU mode gives a small one).
    """
    cases = []
    if 'backbone' in suites:
        for setting in settings:
            for mode in modes:
                cases += [backbone_case(n, setting, mode) for n in names]
    if 'detector' in suites:
        for mode in sorted(modes, reverse=True):  # train first
            # inference in fp32 only, as tools/test.py runs it
            for precision in det_precisions if mode == 'train' else ['fp32']:
                cases += [detector_case(n, mode, precision, det_size) for n in detectors]
    if 'throughput' in suites:
        for precision in precisions:
            cases += [
                throughput_case(n, precision, throughput_setting)
                for n in names
                if n != 'DS-Net-S unfused'
            ]
    return cases
