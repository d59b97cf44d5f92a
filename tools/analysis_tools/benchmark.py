"""Speed and memory of DS-Net against the unfused formulation and mmdet's
peer backbones, in one process and one run.

    python tools/analysis_tools/benchmark.py [--suites backbone,detector]
        [--backbones ...] [--detectors ...] [--settings '224 b8,800x1344 b1']
        [--modes eval,train]
        [--trials 5] [--warmup 1] [--keep-heap] [--out work_dirs/benchmark.json]

Backbones (DS-Net-T/S/B, the unfused DS-Net-S yardstick, ResNet-50, Swin-T,
PVT-Small, PVTv2-b2 built from mmdet) are timed at 224x224 batch 8 and
800x1344 batch 1, in eval (no_grad forward) and train mode (forward + backward
of the summed outputs). Detectors (Mask R-CNN with R-50 + FPN, DS-Net-S + FPN,
DS-Net-S + DS-FPN and DS-Net-S + FPN with ``with_cp``, 2 images of 800x1333)
are timed for one training iteration and for inference. Entries are interleaved trial by trial after
warm-up; medians are reported with the ratio to the first entry of each
group. Peak memory is the CUDA allocator peak on a GPU, and on the CPU the
growth of the peak resident set during one warmed-up run in a fresh process
(so the numbers do not depend on the order of the cases) whose allocator
returns freed blocks to the OS. Train cases also report the activations
autograd keeps for the backward ("saved MB"), which ``with_cp`` cuts. The
DS-Net-S rows include the NCHW layout (``channels_last=False``) and
``with_cp=True`` to show what each costs or saves. On a GPU the
``throughput`` suite adds inference images/s at 224 batch 64 in fp32 and
under bf16 and fp16 autocast; ``--det-precisions fp32,amp`` times the
detectors in fp32 and under AMP as ``--amp`` trains (fp16 autocast, dynamic
loss scaling); a detector training iteration is forward, backward and an
AdamW step. ``--settings``, ``--det-size`` and ``--throughput-setting`` take
any input size (``make gpu-check``'s CPU mode uses small ones).
"""

import argparse
import ctypes
import json
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch

from mmdsnet.analysis import saved_activations_mb
from mmdsnet.analysis.inputs import build_detector, detector_batch, parse_setting
from mmdsnet.models import DSNet
from mmdsnet.testing import reference_for

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


def release_free_heap(device):
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


def sync(device):
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


def peak_memory_mb(case, device, index, selection_args):
    """Peak memory of one run of the case, measured in isolation.

    On the CPU the case runs in a fresh interpreter (this script with
    ``--measure-memory INDEX``): forking a process whose OpenMP pool is already
    running can deadlock, and a fresh process makes the peak independent of
    the cases measured before it.
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
        [sys.executable, osp.abspath(__file__), *selection_args, '--measure-memory', str(index)],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f'memory measurement of {case.name} failed:\n{result.stderr[-3000:]}')
    return float(result.stdout.strip().splitlines()[-1])


def _status_mb(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'{field} not in /proc/self/status')


def measure_rss_growth_mb(case, device):
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

    ``main`` leaves ``throughput`` out on a CPU unless ``--throughput-setting``
    is given (the gpu-check's CPU mode gives a small one).
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--suites', default='backbone,detector,throughput')
    parser.add_argument(
        '--backbones',
        default=','.join(BACKBONES),
        help='comma-separated subset of: ' + ', '.join(BACKBONES),
    )
    parser.add_argument(
        '--settings',
        default=','.join(BACKBONE_SHAPES),
        help="backbone input settings, 'HxW bN' or 'S bN' (default: "
        + ', '.join(BACKBONE_SHAPES)
        + ')',
    )
    parser.add_argument(
        '--precisions',
        default='fp32,bf16,fp16',
        help='throughput suite: fp32 and/or bf16, fp16 autocast',
    )
    parser.add_argument(
        '--throughput-setting',
        help="throughput suite input (default '224 b64'; on a CPU the suite runs only when given)",
    )
    parser.add_argument(
        '--det-precisions',
        default='fp32',
        help='detector training: fp32 and/or amp (fp16 autocast); inference runs in fp32',
    )
    parser.add_argument('--det-size', default='800x1333', help='detector suite image size, HxW')
    parser.add_argument(
        '--detectors',
        default=','.join(DETECTORS),
        help='comma-separated subset of: ' + ', '.join(DETECTORS),
    )
    parser.add_argument('--modes', default='eval,train', help='eval, train or both')
    parser.add_argument('--trials', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument(
        '--keep-heap',
        action='store_true',
        help='CPU: do not trim the heap before each timed run (faster runs, '
        'but the process grows with the number of cases)',
    )
    parser.add_argument('--measure-memory', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--out', default='work_dirs/benchmark.json')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    names = [n for n in args.backbones.split(',') if n]
    unknown = set(names) - set(BACKBONES)
    if unknown:
        parser.error(f'unknown backbones {sorted(unknown)}; choose from {list(BACKBONES)}')
    detectors = [n for n in args.detectors.split(',') if n]
    unknown = set(detectors) - set(DETECTORS)
    if unknown:
        parser.error(f'unknown detectors {sorted(unknown)}; choose from {list(DETECTORS)}')
    modes = [m for m in args.modes.split(',') if m]
    if not modes or set(modes) - {'eval', 'train'}:
        parser.error(f'unknown modes {modes}; choose from eval, train')
    settings = [s for s in args.settings.split(',') if s]
    for setting in settings + [args.throughput_setting or '224 b64']:
        try:
            parse_setting(setting)
        except ValueError as error:
            parser.error(str(error))
    precisions = [p for p in args.precisions.split(',') if p]
    if not precisions or set(precisions) - set(PRECISIONS):
        parser.error(f'unknown precisions {precisions}; choose from {list(PRECISIONS)}')
    det_precisions = [p for p in args.det_precisions.split(',') if p]
    if not det_precisions or set(det_precisions) - {'fp32', 'amp'}:
        parser.error(f'unknown detector precisions {det_precisions}; choose from fp32, amp')
    if len(args.det_size.split('x')) != 2 or not args.det_size.replace('x', '').isdigit():
        parser.error(f"--det-size {args.det_size!r} is not 'HxW' (e.g. 800x1333)")
    suites = set(args.suites.split(','))
    if device.type == 'cpu' and args.throughput_setting is None:
        suites.discard('throughput')
    cases = make_cases(
        suites,
        device,
        names,
        settings,
        modes,
        detectors,
        precisions,
        det_precisions,
        args.det_size,
        args.throughput_setting or '224 b64',
    )
    if args.measure_memory is not None:  # child process of peak_memory_mb
        print(measure_rss_growth_mb(cases[args.measure_memory], device))
        return None
    selection = [
        '--suites',
        ','.join(sorted(suites)),
        '--precisions',
        args.precisions,
        '--det-precisions',
        args.det_precisions,
        '--det-size',
        args.det_size,
        *(['--throughput-setting', args.throughput_setting] if args.throughput_setting else []),
        '--backbones',
        args.backbones,
        '--detectors',
        args.detectors,
        '--settings',
        args.settings,
        '--modes',
        args.modes,
    ]

    if not cases:
        parser.error(
            f'nothing to run for suites {args.suites!r} on {device.type} '
            '(throughput on a CPU needs --throughput-setting)'
        )
    groups = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    for group, members in groups.items():
        if not args.no_memory:
            for case in members:
                case.memory_mb = peak_memory_mb(case, device, cases.index(case), selection)
        for case in members:
            for _ in range(args.warmup):
                if not args.keep_heap:
                    release_free_heap(device)
                case.run_once(device)
            if hasattr(case, 'measure_saved'):
                case.saved_mb = case.measure_saved(device)
        for _ in range(args.trials):  # interleaved: one trial of each in turn
            for case in members:
                if not args.keep_heap:
                    release_free_heap(device)
                case.times.append(case.run_once(device))
        for case in members:
            case.state = None  # free the model before the next group
        print_group(group, members)
        # rewritten after every group: an interrupted run keeps what it measured
        report = write_report(args, device, [c for c in cases if c.times])
    print(f'machine: {report["machine"]}; torch {torch.__version__}; wrote {args.out}')
    return report


def write_report(args, device, done):
    machine = (
        torch.cuda.get_device_name()
        if device.type == 'cuda'
        else f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    )
    report = dict(
        machine=machine,
        torch=torch.__version__,
        trials=args.trials,
        warmup=args.warmup,
        heap_trimmed=not args.keep_heap,
        date=time.strftime('%Y-%m-%d'),
        results=[
            dict(
                group=c.group,
                name=c.name,
                median_s=statistics.median(c.times),
                times_s=c.times,
                peak_memory_mb=c.memory_mb,
                saved_activations_mb=c.saved_mb,
                **(
                    dict(images_per_s=c.batch / statistics.median(c.times))
                    if hasattr(c, 'batch')
                    else {}
                ),
            )
            for c in done
        ],
    )
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    return report


def print_group(group, members):
    first = members[0]
    base_time = statistics.median(first.times)
    with_saved = first.saved_mb is not None
    with_rate = hasattr(first, 'batch')
    print(f'\n{group} (ratios to {first.name})')
    print(
        f'| {"model":30s} | median ms | x time | peak MB | x mem |'
        + (' saved MB | x saved |' if with_saved else '')
        + (' img/s |' if with_rate else '')
    )
    print(
        '|'
        + '-' * 32
        + '|-----------|--------|---------|-------|'
        + ('----------|---------|' if with_saved else '')
        + ('-------|' if with_rate else '')
    )
    for case in members:
        median = statistics.median(case.times)
        memory = case.memory_mb if case.memory_mb is not None else float('nan')
        ratio_mem = memory / first.memory_mb if first.memory_mb else float('nan')
        line = (
            f'| {case.name:30s} | {median * 1e3:9.1f} | {median / base_time:6.2f} | '
            f'{memory:7.0f} | {ratio_mem:5.2f} |'
        )
        if with_saved:
            line += f' {case.saved_mb:8.0f} | {case.saved_mb / first.saved_mb:7.2f} |'
        if with_rate:
            line += f' {case.batch / median:5.0f} |'
        print(line)
    sys.stdout.flush()


if __name__ == '__main__':
    main()
