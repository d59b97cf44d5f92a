# The `make demo` job: DS-Net-T + DS-FPN Mask R-CNN trained from scratch on
# the synthetic shapes dataset (tools/demo/make_demo_data.py), sized for a
# 2-core CPU: images <= 320 px, fewer proposals and sampled RoIs.
_base_ = '../mask_rcnn_dsnet_s_dsfpn_1x_coco.py'

data_root = 'data/demo/coco/'
classes = ('circle', 'square', 'triangle')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 160, 0), (0, 0, 230)])
image_scale = (320, 320)

model = dict(
    # Pad to 32: every DS-Net stage sees whole patches and an exact global grid.
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.0,
        # No ImageNet weights offline: train from scratch, so BN must learn
        # its statistics (norm_eval=False). BN (not SyncBN) also runs with
        # several CPU processes.
        norm_eval=False,
        init_cfg=None,
    ),
    rpn_head=dict(anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0])),
    roi_head=dict(
        bbox_head=dict(num_classes=len(classes)), mask_head=dict(num_classes=len(classes))
    ),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=600, max_per_img=200),
        rcnn=dict(sampler=dict(num=64)),
    ),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=20)),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
# Settings shared by the train and val loaders (one process loads, no workers).
loader = dict(num_workers=0, persistent_workers=False)
split = dict(data_root=data_root, metainfo=metainfo)
train_dataloader = dict(
    **loader,
    batch_size=4,
    dataset=dict(
        **split,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline,
    ),
)
# Evaluate one image at a time: a batch is zero-padded to its largest image and
# DS-Net's global stream attends over the padding, so batched AP depends on
# which images share a batch (docs/demo.md measures it). At batch 1 the
# end-of-training validation and tools/test.py see identical inputs for any
# number of processes.
val_dataloader = dict(
    **loader,
    batch_size=1,
    dataset=dict(
        **split,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 20
# Validate every 5 epochs: the mAP curve (work_dir/pictures) gets 4 points.
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3, weight_decay=0.05), clip_grad=dict(max_norm=10.0, norm_type=2)
)
# The schedule is in epochs, so it is the same for any number of processes or
# GPUs; only the iterations per epoch change (the 57 training images with
# objects / (4 x processes), rounded up).
# The warm-up is given in epochs too and converted to iterations, so it stays
# 6.25 / 20 of the run: 50 of 160 iterations with 2 processes, 12 of 40 with 8
# (tests/configs/test_demo_schedule.py).
warmup_epochs = 6.25
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True,
    ),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5),
]
# 8 images per step (2 processes x 4); auto_scale_lr stays off.
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(
    logger=dict(interval=4),
    # One checkpoint per run is enough for the demo (tools/demo/demo.sh keeps earlier runs).
    checkpoint=dict(interval=4, max_keep_ckpts=1),
    # Drawn only when tools/test.py gets --show-dir: every test image, ground
    # truth left and prediction right, boxes and masks scoring >= score_thr.
    visualization=dict(type='DetVisualizationHook', score_thr=0.3),
)
# Each logged loss is the mean over its 4 iterations (mmdet's default smooths over
# 50, a third of this run), so the loss curves follow the training closely.
log_processor = dict(window_size=4)
# BN running statistics are per process under DDP (mmengine does not broadcast
# buffers): average them after every epoch, so the validation (each process
# evaluates its share of the images) and the saved checkpoint use the same ones.
custom_hooks = [dict(type='SyncBuffersHook')]
