# `make demo TASK=seg`: Semantic FPN with DS-Net-T trained from scratch on the
# synthetic shapes label maps (tools/demo/make_demo_data.py), sized for a
# 2-core CPU. Label convention: raw 0 = unlabelled frame (ignored through
# reduce_zero_label), 1 = background, 2-4 = circle, square, triangle.
_base_ = '../fpn_dsnet-t_4xb8-40k_ade20k-512x512.py'

data_root = 'data/demo/seg/'
classes = ('background', 'circle', 'square', 'triangle')
metainfo = dict(
    classes=classes, palette=[(120, 120, 120), (215, 50, 45), (45, 170, 60), (50, 80, 210)]
)
crop_size = (256, 256)
# BN (not SyncBN): BN statistics are learned from scratch here; SyncBN would
# be reverted to BN on CPU anyway.
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(drop_path_rate=0.0, norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(num_classes=len(classes), norm_cfg=norm_cfg),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(320, 256), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=True,
)
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    # Epochs, not mmseg's endless sampler: the schedule below is in epochs.
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        **dataset,
        pipeline=train_pipeline,
        data_prefix=dict(img_path='images/train', seg_map_path='annotations/train'),
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        **dataset,
        pipeline=test_pipeline,
        data_prefix=dict(img_path='images/val', seg_map_path='annotations/val'),
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# The schedule is in epochs (mmseg's configs count iterations), so it is the same
# for any number of processes or GPUs: 30 epochs are 240 iterations with 2
# processes x 4 images, 60 with 8. The warm-up (2.5 epochs, 20 iterations with 2
# processes) and the poly decay are converted to iterations from epochs
# (tests/configs/test_demo_schedule.py).
max_epochs = 30
warmup_epochs = 2.5
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.01))
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
        type='PolyLR',
        eta_min=0.0,
        power=0.9,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(
    logger=dict(interval=4, log_metric_by_epoch=True),
    checkpoint=dict(by_epoch=True, interval=10, max_keep_ckpts=1),
    # Drawn only when tools/test.py gets --show-dir; interval=1 draws every
    # image (mmseg's default of 50 would draw none of the 16).
    visualization=dict(type='SegVisualizationHook', interval=1),
)
# Progress by epoch; each logged loss is the mean over its 4 iterations.
log_processor = dict(by_epoch=True, window_size=4)
# BN statistics are per process under DDP: average them after every epoch, so
# validation and the checkpoint use the same ones.
custom_hooks = [dict(type='SyncBuffersHook')]
