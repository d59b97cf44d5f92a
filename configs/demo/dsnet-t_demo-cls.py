# `make demo TASK=cls`: an mmpretrain ImageClassifier with DS-Net-T trained
# from scratch on the generated shapes classification set
# (tools/demo/make_demo_data.py --task cls: 64x64 images of one circle, square or
# triangle, 100 per class for training and 30 for validation), sized for a
# 2-core CPU shared with other work.
# Needs mmpretrain (requirements/classification.txt).
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmdsnet'], allow_failed_imports=False)

data_root = 'data/demo/cls/'
# The folder names; mmpretrain's CustomDataset numbers them in sorted order.
classes = ('circle', 'square', 'triangle')

model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        num_classes=len(classes),
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True,
    ),
    # Stage 4 (stride 32, 2x2 at 64 px) feeds the head. From scratch: no
    # ImageNet weights offline.
    backbone=dict(type='DSNet', arch='tiny', out_indices=(3,), final_norm=True, drop_path_rate=0.0),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=len(classes),
        in_channels=512,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='CustomDataset', data_root=data_root, data_prefix='train', pipeline=train_pipeline
    ),
)
val_dataloader = dict(
    batch_size=10,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CustomDataset', data_root=data_root, data_prefix='val', pipeline=test_pipeline
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

# The schedule is in epochs, the same for any number of processes: with 2
# processes x 16 images an epoch is 10 iterations. Warm-up for 1 epoch, then a
# cosine to 0 (tests/configs/test_demo_schedule.py).
max_epochs = 6
warmup_epochs = 1
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05), clip_grad=dict(max_norm=5.0)
)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
auto_scale_lr = dict(enable=False, base_batch_size=32)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=5, log_metric_by_epoch=True),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=max_epochs, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # Off in training; tools/test.py --show-dir turns it on and draws every
    # image (interval=1), enlarged to 192 px so the label and score are legible.
    visualization=dict(type='VisualizationHook', enable=False, interval=1, resize=192),
)
# BN statistics are per process under DDP: average them after every epoch, so
# validation and the checkpoint use the same ones.
custom_hooks = [dict(type='SyncBuffersHook')]
log_processor = dict(by_epoch=True, window_size=5)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # gloo on a machine without a GPU (mmdsnet.engine)
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
