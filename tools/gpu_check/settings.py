"""What `make gpu-check` runs and checks, as data: the one place to add a step or a setting.

The measurement steps are lists of ``(script in tools/analysis_tools/, file it writes under OUT,
its arguments)``, run in turn; a new measurement (a setting switched on and off, another model)
is another entry, a new step another key here, in ``STEPS`` and in ``LIMITS``. Standard library
only, like the rest of tools/gpu_check/.
"""

# The order the steps run in: what no earlier GPU run has finished (the demo) before what
# re-measures; the bf16 demo last, as what a cut budget loses first (a later call can run it
# alone: --steps install,demo_bf16).
STEPS = ('install', 'env', 'tests', 'demo', 'attention', 'benchmark', 'profile', 'demo_bf16')

# What the later steps import, checked by the install step (check_imports.py) so that a
# machine without a package the wheels lack hears of every such package in one run.
IMPORTS = (
    'mmengine.runner', 'mmdet.apis', 'mmdet.evaluation', 'mmdet.visualization', 'mmseg.apis',
    'mmseg.evaluation', 'mmdsnet', 'mmdsnet.analysis',
)  # fmt: skip

# Seconds each step may take before it is stopped (the GPU check must end in under 9 minutes
# with a prebuilt mmcv; building mmcv takes about 5 more). On the H100 of 2026-11-27: install
# 28-47 s, env 4-6, the AMP Mask R-CNN test 24, attention 34, benchmark 112 (5 trials), profile
# 57; the demo's iterations took 0.26 s (300 of them) between cuDNN's graph builds (3.8-9.4 s),
# which DS-Net's attention no longer uses.
LIMITS = dict(
    install=120, install_build=900, env=60, tests=180, demo=240, attention=120, benchmark=220,
    profile=120, demo_bf16=240,
)  # fmt: skip

BACKBONES = 'DS-Net-T,DS-Net-S,DS-Net-B,ResNet-50,Swin-T,PVTv2-b2'
DETECTORS = 'MaskRCNN R-50+FPN,MaskRCNN DS-Net-S+FPN,MaskRCNN DS-Net-S+DS-FPN,MaskRCNN Swin-T+FPN'
# Mask R-CNN under AMP with the fp32 RoI extractor and with mmcv's fp16 RoIAlign, each model
# both ways (this package's configs use the fp32 one, mmdet's the other).
ROI_EXTRACTOR_PAIRS = (
    'MaskRCNN R-50+FPN,MaskRCNN R-50+FPN fp32 RoIAlign,MaskRCNN DS-Net-S+FPN,'
    'MaskRCNN DS-Net-S+FPN mmcv RoIAlign,MaskRCNN Swin-T+FPN,'
    'MaskRCNN Swin-T+FPN fp32 RoIAlign'
)
GPU_TRIALS = ['--trials', '3', '--warmup', '1']
CPU_TRIALS = ['--trials', '1', '--warmup', '0', '--no-memory']


def profiles(arch, size, batch, precisions, detector_size, warmup, amp):
    """profile_detector.py's DS-Net-S Mask R-CNN iteration (fp32, and AMP when ``amp``) and
    profile_backbone.py's inference of DS-Net-``arch`` at ``size`` in each precision, the last
    one also with cudnn.benchmark on."""
    detector = ['--size', detector_size, '--warmup', warmup]
    runs = [('profile_detector.py', 'profile_dsnet-s_maskrcnn_fp32.txt', detector)]
    if amp:
        amp_run = ('profile_detector.py', 'profile_dsnet-s_maskrcnn_amp.txt', [*detector, '--amp'])
        runs.append(amp_run)
    for precision in precisions:
        name = f'profile_dsnet-{arch[0]}_inference_{size}b{batch}_{precision}.txt'
        args = ['--arch', arch, '--shape', size, size, '--batch', batch, '--precision', precision]
        runs.append(('profile_backbone.py', name, args))
    name, args = runs[-1][1:]
    runs.append(('profile_backbone.py', name.replace('.txt', '_cudnn-benchmark.txt'),
                 [*args, '--cudnn-benchmark']))  # fmt: skip
    return runs


GPU = dict(
    # amp: the AmpOptimWrapper's dtype (tools/train.py --amp); nproc None: demo.sh's one per GPU
    demo=dict(amp='float16', nproc=None, options=[]),
    # bf16 AMP: possible because the configs' RoI extractor runs mmcv's RoIAlign in fp32
    demo_bf16=dict(amp='bfloat16', nproc=None, options=[]),
    attention=[
        ('attention_backends.py', 'results/attention_backends.json',
         ['--settings', '224 b1,800x1344 b1',  # every arch of DSNet.arch_settings
          '--precisions', 'fp32,fp16,bf16']),
        ('attention_kernels.py', 'results/attention_kernels.json',
         ['--arch', 'small', '--shape', '800', '1344', '--batch', '2', '--kernels', 'efficient',
          'flash', '--precisions', 'fp32', 'fp16', '--trials', '3', '--splits', 'never', 'auto']),
    ],
    benchmark=[
        ('benchmark.py', 'results/benchmark_backbones.json',
         ['--suites', 'backbone,throughput', '--backbones', BACKBONES, '--settings', '800x1344 b2',
          '--modes', 'train', '--backbone-precisions', 'fp32,fp16', '--throughput-setting',
          '224 b64', '--precisions', 'fp32,bf16,fp16', *GPU_TRIALS]),
        ('benchmark.py', 'results/benchmark_detectors.json',
         ['--suites', 'detector', '--detectors', DETECTORS, '--modes', 'train,eval',
          '--det-size', '800x1333', '--det-precisions', 'fp32,amp', *GPU_TRIALS]),
        # last: what a cut budget loses first
        ('benchmark.py', 'results/benchmark_detectors_roi_extractor.json',
         ['--suites', 'detector', '--detectors', ROI_EXTRACTOR_PAIRS, '--modes', 'train',
          '--det-size', '800x1333', '--det-precisions', 'amp', *GPU_TRIALS]),
    ],
    # the inference throughput case whose autocast figure missed its target
    profile=profiles('small', '224', '64', ['fp32', 'bf16'], '800x1333', '2', amp=True),
)  # fmt: skip

# Tiny settings for the CPU mode: fewer models, small inputs, one trial.
# The demo: one epoch on 8 training and 4 validation images of 96 px, one process, no AMP
# (mmengine's AMP needs a GPU).
CPU_DEMO = dict(
    amp=None,
    nproc=1,
    options=[
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1',
        'train_dataloader.dataset.indices=8',
        'val_dataloader.dataset.indices=4',
        'test_dataloader.dataset.indices=4',
        'train_dataloader.dataset.pipeline.2.scale=(96,96)',
        'val_dataloader.dataset.pipeline.1.scale=(96,96)',
        'test_dataloader.dataset.pipeline.1.scale=(96,96)',
        'param_scheduler.0.end=1',
        'param_scheduler.1.end=1',
        'default_hooks.logger.interval=1',  # 2 iterations: demo_summary.py needs losses
    ],
)
# Steps the CPU mode records as 'gpu only' instead of running them, and why.
CPU_LEAVES_OUT = dict(
    demo_bf16="bf16 AMP needs a GPU: on the CPU this step would repeat the demo step's fp32 run",
)
CPU = dict(
    demo=CPU_DEMO,
    attention=[
        ('attention_backends.py', 'results/attention_backends.json',
         ['--archs', 'tiny', '--settings', '64 b1', '--precisions', 'fp32,bf16']),
        ('attention_kernels.py', 'results/attention_kernels.json',
         ['--arch', 'tiny', '--shape', '256', '320', '--batch', '2', '--kernels', 'flash',
          '--precisions', 'fp32', '--trials', '1', '--splits', 'never', 'auto']),
    ],
    benchmark=[
        ('benchmark.py', 'results/benchmark_backbones.json',
         ['--suites', 'backbone,throughput', '--backbones', 'DS-Net-T,ResNet-50',
          '--settings', '64x96 b1', '--modes', 'train', '--backbone-precisions', 'fp32,bf16',
          '--throughput-setting', '64 b2', '--precisions', 'fp32,bf16', *CPU_TRIALS]),
        ('benchmark.py', 'results/benchmark_detectors.json',
         ['--suites', 'detector', '--detectors', 'MaskRCNN R-50+FPN,MaskRCNN DS-Net-S+FPN',
          '--modes', 'train,eval', '--det-size', '64x96', '--det-precisions', 'fp32',
          *CPU_TRIALS]),
        # the RoI-extractor pair, in fp32 (CPU autocast hands mmcv's nms bf16 boxes)
        ('benchmark.py', 'results/benchmark_detectors_roi_extractor.json',
         ['--suites', 'detector', '--detectors',
          'MaskRCNN DS-Net-S+FPN,MaskRCNN DS-Net-S+FPN mmcv RoIAlign', '--modes', 'train',
          '--det-size', '64x96', '--det-precisions', 'fp32', *CPU_TRIALS]),
    ],
    # fp32: on this CPU bf16 takes the per-channel reference convolutions, whose profiler
    # events took 10 s to parse (tests/tools/test_analysis_tools.py profiles under autocast)
    profile=profiles('tiny', '64', '2', ['fp32'], '64x96', '1', amp=False),
)  # fmt: skip

# The targets summary.md checks: in each group of a result file whose name contains GROUP, the
# FIGURE of CASE over PEER's must be at least BOUND for images/s, at most BOUND for time and
# memory. These peers are also the ratio columns of the summary's tables of that file.
TARGETS = [
    # (result file, group, case, peer, figure, bound)
    ('benchmark_backbones.json', 'throughput', 'DS-Net-S', 'Swin-T', 'images_per_s', 1.0),
    ('benchmark_detectors.json', ' train ', 'MaskRCNN DS-Net-S+FPN', 'MaskRCNN Swin-T+FPN',
     'median_s', 1.0),
    ('benchmark_detectors.json', ' train ', 'MaskRCNN DS-Net-S+FPN', 'MaskRCNN Swin-T+FPN',
     'peak_memory_mb', 1.0),
    ('benchmark_detectors.json', ' train ', 'MaskRCNN DS-Net-S+FPN', 'MaskRCNN R-50+FPN',
     'median_s', 1.3),
]  # fmt: skip
