"""What the benchmark measures and how it reports it: its backbones and
detectors, one case per model, input and mode, the check of a selection, the
run of a group and its table (tools/analysis_tools/benchmark.py parses the
command line and writes the report).

A :class:`Case` builds its model on first use and runs one step per call, so
the cases of a group are interleaved trial by trial after warm-up. The
entries are data: a backbone is a builder, a detector a config with
``--cfg-options``-style overrides; a printed column is one :data:`COLUMNS`
entry reading one key of :meth:`Case.result`. The detector entries name this
package's configs as ``mmdsnet::`` (its installed configs, or the ``config_dir``
a caller gives) and mmdet's as ``mmdet::``.
"""

import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from mmdet.registry import MODELS
from mmengine.registry import init_default_scope

from ..models import DSNet
from ..testing import reference_for
from .inputs import PRECISIONS, build_detector, detector_batch, parse_setting, split_choices
from .launches import MODES as LAUNCH_MODES
from .launches import backbone_launches
from .memory import peak_memory_mb, release_free_heap, saved_activations_mb
from .profiling import PHASES, backbone_step, detector_iteration, sync, timed_phase


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
# Backbones the throughput suite leaves out.
NOT_IN_THROUGHPUT = ('DS-Net-S unfused',)
BACKBONE_SETTINGS = ('224 b8', '800x1344 b1')
DS_FPN = 'mmdsnet::mask_rcnn_dsnet_s_fpn_1x_coco.py'


def roi_extractors(kind: str) -> dict:
    """Overrides that give a Mask R-CNN's box and mask heads the RoI extractor ``kind``."""
    return {f'model.roi_head.{head}_roi_extractor.type': kind for head in ('bbox', 'mask')}


# name -> (config, overrides as --cfg-options); R-50 first, so the ratios read against it
DETECTORS = {
    'MaskRCNN R-50+FPN': ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', {}),
    'MaskRCNN DS-Net-S+FPN': (DS_FPN, {}),
    'MaskRCNN DS-Net-S+DS-FPN': ('mmdsnet::mask_rcnn_dsnet_s_dsfpn_1x_coco.py', {}),
    'MaskRCNN Swin-T+FPN': ('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', {}),
    'MaskRCNN DS-Net-S+FPN with_cp': (DS_FPN, {'model.backbone.with_cp': True}),
    # like-for-like with R-50's config, which freezes the stem and stage 1
    'MaskRCNN DS-Net-S+FPN frozen_stages=1': (DS_FPN, {'model.backbone.frozen_stages': 1}),
    # RoIAlign in fp32 under AMP (this package's configs) against mmcv's in fp16, both ways
    'MaskRCNN DS-Net-S+FPN mmcv RoIAlign': (DS_FPN, roi_extractors('SingleRoIExtractor')),
    'MaskRCNN R-50+FPN fp32 RoIAlign': (
        'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        roi_extractors('FP32SingleRoIExtractor'),
    ),
    'MaskRCNN Swin-T+FPN fp32 RoIAlign': (
        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
        roi_extractors('FP32SingleRoIExtractor'),
    ),
}
MODES = ('eval', 'train')
# The report's keys of the phases of a detector training iteration (profiling.PHASES).
PHASE_KEYS = ('forward_loss_ms', 'backward_ms', 'optimizer_step_ms')
# Detector training precisions: fp32, or AMP as --amp trains (fp16 autocast, loss scaling).
DET_PRECISIONS = ('fp32', 'amp')


@dataclass(eq=False)
class Case:
    """One timed entry: builds its state on first use and runs one step per call.

    ``build(device)`` returns the state ``step(state)`` runs on. ``batch``:
    images per step, reported as images/s (None: no rate). ``measures_saved``:
    the state starts with (model, inputs), whose saved activations are counted.
    """

    group: str
    name: str
    setting: str
    build: Callable[[torch.device], tuple]
    step: Callable[[tuple], None]
    batch: Optional[int] = None
    measures_saved: bool = False
    state: Optional[tuple] = field(default=None, repr=False)
    times: List[float] = field(default_factory=list)
    memory_mb: Optional[float] = None
    saved_mb: Optional[float] = None  # activations kept for backward (train cases)
    phases: Dict[str, List[float]] = field(default_factory=dict)
    # kernel-launching operators of one step, counted on the CPU (backbone cases)
    launch_count: Optional[Callable[[], Optional[int]]] = field(default=None, repr=False)
    launches: Optional[int] = None

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

    def measure_saved(self, device):
        self.prepare(device)
        return saved_activations_mb(*self.state[:2])

    def result(self) -> dict:
        """The case's entry in the report."""
        median = statistics.median(self.times)
        entry = dict(
            group=self.group,
            name=self.name,
            median_s=median,
            times_s=self.times,
            peak_memory_mb=self.memory_mb,
            saved_activations_mb=self.saved_mb,
        )
        if self.batch is not None:
            entry['images_per_s'] = self.batch / median
        if self.launches is not None:
            entry['launches'] = self.launches
        for phase, key in zip(PHASES, PHASE_KEYS):
            if self.phases.get(phase):
                entry[key] = statistics.median(self.phases[phase])
        return entry


def backbone_build(name, setting, train):
    """A builder of backbone ``name`` in train or eval mode with a random batch of ``setting``."""
    batch, height, width = parse_setting(setting)

    def build(device):
        model = BACKBONES[name]().to(device)
        model.train(train)  # not chained: mmdet's ResNet.train() returns None
        return model, torch.randn(batch, 3, height, width, device=device)

    return build


def launch_count(name, mode, precision):
    """A counter of the kernel-launching operators of one step of backbone ``name``
    (``analysis.launches``: on the CPU, at 224 b1, where Swin-T pads no window and
    DS-Net's count does not depend on the size); None where it counts no such step."""
    key = mode if mode == 'eval' and precision == 'fp32' else f'{mode} {precision}'

    def count():
        if key not in LAUNCH_MODES:
            return None
        torch.manual_seed(0)
        return backbone_launches(BACKBONES[name](), (1, 3, 224, 224), [key])[key]

    return count


def backbone_case(name, setting, mode, precision='fp32'):
    """Inference, or forward and backward of the summed outputs, of a backbone;
    the forward under autocast unless ``precision`` is fp32."""
    train = mode == 'train'
    build = backbone_build(name, setting, train)
    group = f'backbone {setting} {mode}' + ('' if precision == 'fp32' else f' {precision}')
    return Case(
        group,
        name,
        setting,
        build,
        lambda state: backbone_step(*state, train=train, precision=precision),
        measures_saved=train,
        launch_count=launch_count(name, mode, precision),
    )


def detector_case(name, mode, precision='fp32', size='800x1333', config_dir=None):
    """One Mask R-CNN step on 2 images of ``size``: a training iteration
    (forward, backward, AdamW step; ``precision='amp'`` as ``--amp`` trains)
    or inference. ``config_dir``: where ``mmdsnet::`` configs are found."""
    height, width = (int(v) for v in size.split('x'))
    amp = precision == 'amp'

    def build(device):
        model = build_detector(*DETECTORS[name], config_dir=config_dir).to(device)
        model.train(mode == 'train')
        data = detector_batch(model, device, height, width)
        if mode != 'train':
            return model, data
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        return model, data, optimizer, torch.amp.GradScaler(device.type, enabled=amp)

    def step(state):
        if mode != 'train':
            with torch.no_grad():
                state[0](**state[1], mode='predict')
            return
        times = {}
        device = state[1]['inputs'].device

        def phase(name):
            return timed_phase(times, name, device)

        detector_iteration(*state, amp=amp, phase=phase)
        for name, ms in times.items():
            case.phases.setdefault(name, []).append(ms)

    case = Case(f'Mask R-CNN 2x{size} {mode} {precision}', name, f'{size} b2', build, step, 2)
    return case


def throughput_case(name, precision, setting='224 b64'):
    """Inference images/s of a backbone, fp32 or under bf16/fp16 autocast."""
    batch = parse_setting(setting)[0]
    build = backbone_build(name, setting, train=False)

    def step(state):
        backbone_step(*state, precision=precision)

    return Case(f'throughput {setting} {precision}', name, setting, build, step, batch)


def make_cases(
    suites,
    device,
    names,
    settings,
    modes=MODES,
    detectors=DETECTORS,
    precisions=tuple(PRECISIONS),
    det_precisions=('fp32',),
    det_size='800x1333',
    throughput_setting='224 b64',
    config_dir=None,
    backbone_precisions=('fp32',),
):
    """The cases of the chosen suites, in the order they are grouped and run."""
    cases = []
    if 'backbone' in suites:
        for setting in settings:
            for mode in modes:
                for precision in backbone_precisions:
                    cases += [backbone_case(n, setting, mode, precision) for n in names]
    if 'detector' in suites:
        for mode in sorted(modes, reverse=True):  # train first
            # inference in fp32 only, as tools/test.py runs it
            for precision in det_precisions if mode == 'train' else ['fp32']:
                cases += [
                    detector_case(n, mode, precision, det_size, config_dir) for n in detectors
                ]
    if 'throughput' in suites:
        for precision in precisions:
            cases += [
                throughput_case(n, precision, throughput_setting)
                for n in names
                if n not in NOT_IN_THROUGHPUT
            ]
    return cases


def select_cases(
    device,
    *,
    suites,
    backbones,
    settings,
    modes,
    detectors,
    precisions,
    det_precisions,
    det_size,
    throughput_setting=None,
    config_dir=None,
    backbone_precisions='fp32',
) -> List[Case]:
    """The cases of a selection given as the tool's comma-separated choices.

    Raises ValueError naming what was wrong and what is accepted. On a CPU the
    ``throughput`` suite runs only when ``throughput_setting`` is given.
    """
    names = split_choices(backbones, 'backbones', BACKBONES, allow_empty=True)
    chosen_detectors = split_choices(detectors, 'detectors', DETECTORS, allow_empty=True)
    chosen_modes = split_choices(modes, 'modes', MODES)
    chosen_settings = [s for s in settings.split(',') if s]
    for setting in chosen_settings + [throughput_setting or '224 b64']:
        parse_setting(setting)
    chosen_precisions = split_choices(precisions, 'precisions', PRECISIONS)
    chosen_det_precisions = split_choices(det_precisions, 'detector precisions', DET_PRECISIONS)
    chosen_backbone_precisions = split_choices(
        backbone_precisions, 'backbone precisions', PRECISIONS
    )
    if len(det_size.split('x')) != 2 or not det_size.replace('x', '').isdigit():
        raise ValueError(f"--det-size {det_size!r} is not 'HxW' (e.g. 800x1333)")
    chosen_suites = set(suites.split(','))
    if device.type == 'cpu' and throughput_setting is None:
        chosen_suites.discard('throughput')
    cases = make_cases(
        chosen_suites, device, names, chosen_settings, chosen_modes, chosen_detectors,
        chosen_precisions, chosen_det_precisions, det_size, throughput_setting or '224 b64',
        config_dir, chosen_backbone_precisions,
    )  # fmt: skip
    if not cases:
        raise ValueError(
            f'nothing to run for suites {suites!r} on {device.type} '
            '(throughput on a CPU needs --throughput-setting)'
        )
    return cases


def run_group(members, device, trials, warmup, trim_heap=True, memory_command=None, launches=False):
    """Measure one group of cases: the peak memory of each alone (unless
    ``memory_command`` is None; on the CPU ``memory_command(case)`` runs it in a
    fresh process, see :func:`peak_memory_mb`), then per case ``warmup`` runs
    and its saved activations, then ``trials`` trials interleaved, one run of
    each case in turn. The models are freed afterwards. ``launches``: also
    count each backbone case's kernel-launching operators (on the CPU)."""
    if launches:
        for case in members:
            case.launches = case.launch_count() if case.launch_count else None
    if memory_command is not None:
        for case in members:
            case.memory_mb = peak_memory_mb(case, device, memory_command(case))
    for case in members:
        for _ in range(warmup):
            if trim_heap:
                release_free_heap(device)
            case.run_once(device)
        if case.measures_saved:
            case.saved_mb = case.measure_saved(device)
    for _ in range(trials):
        for case in members:
            if trim_heap:
                release_free_heap(device)
            case.times.append(case.run_once(device))
    for case in members:
        case.state = None  # free the model before the next group


def _value(key, scale=1.0):
    return lambda entry, first: float('nan') if entry[key] is None else entry[key] * scale


def _ratio(key):
    return lambda entry, first: (
        entry[key] / first[key] if entry[key] is not None and first[key] else float('nan')
    )


# The printed table after the model's name: (header, format, value of an entry
# given the group's first entry, key the first entry must hold for the column
# to be shown: None shows it always).
COLUMNS = (
    ('median ms', '9.1f', _value('median_s', 1e3), None),
    ('x time', '6.2f', _ratio('median_s'), None),
    ('peak MB', '7.0f', _value('peak_memory_mb'), None),
    ('x mem', '5.2f', _ratio('peak_memory_mb'), None),
    ('saved MB', '8.0f', _value('saved_activations_mb'), 'saved_activations_mb'),
    ('x saved', '7.2f', _ratio('saved_activations_mb'), 'saved_activations_mb'),
    ('img/s', '5.0f', _value('images_per_s'), 'images_per_s'),
    ('launches', '8.0f', _value('launches'), 'launches'),
    ('x launches', '10.2f', _ratio('launches'), 'launches'),
    ('fwd+loss ms', '11.1f', _value('forward_loss_ms'), 'forward_loss_ms'),
    ('bwd ms', '8.1f', _value('backward_ms'), 'backward_ms'),
    ('step ms', '7.1f', _value('optimizer_step_ms'), 'optimizer_step_ms'),
)


def format_group(group: str, members: List[Case]) -> str:
    """The group's table, ratios to its first entry."""
    entries = [case.result() for case in members]
    first = entries[0]
    columns = [c for c in COLUMNS if c[3] is None or first.get(c[3]) is not None]
    widths = [int(fmt.split('.')[0]) for _, fmt, _, _ in columns]
    lines = [
        f'\n{group} (ratios to {first["name"]})',
        f'| {"model":30s} |' + ''.join(f' {c[0]:>{w}} |' for c, w in zip(columns, widths)),
        '|' + '-' * 32 + '|' + ''.join('-' * (w + 2) + '|' for w in widths),
    ]
    for entry in entries:
        values = ''.join(f' {value(entry, first):{fmt}} |' for _, fmt, value, _ in columns)
        lines.append(f'| {entry["name"]:30s} |' + values)
    return '\n'.join(lines)


def report(cases: List[Case], device, trials: int, warmup: int, heap_trimmed: bool) -> dict:
    """The run's report: the machine, the settings and the entries measured so far."""
    machine = (
        torch.cuda.get_device_name()
        if device.type == 'cuda'
        else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    )
    return dict(
        machine=machine,
        torch=torch.__version__,
        trials=trials,
        warmup=warmup,
        heap_trimmed=heap_trimmed,
        date=time.strftime('%Y-%m-%d'),
        results=[c.result() for c in cases if c.times],
    )
