# The `make demo` job: DS-Net-T + DS-FPN Mask R-CNN trained from scratch on
# the synthetic shapes dataset (tools/misc/make_demo_data.py), sized for a
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
        drop_path_rate=0.,
        # No ImageNet weights offline: train from scratch, so BN must learn
        # its statistics (norm_eval=False). BN (not SyncBN) also runs with
        # several CPU processes.
        norm_eval=False,
        init_cfg=None),
    neck=dict(ds_norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    rpn_head=dict(anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0])),
    roi_head=dict(
        bbox_head=dict(num_classes=len(classes)),
        mask_head=dict(num_classes=len(classes))),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=600, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20)))

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
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# Settings shared by the train and val loaders (one process loads, no workers).
loader = dict(batch_size=4, num_workers=0, persistent_workers=False)
split = dict(data_root=data_root, metainfo=metainfo)
train_dataloader = dict(
    **loader,
    dataset=dict(**split, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    **loader,
    dataset=dict(**split, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 20
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=10., norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5),
]
# 8 images per step (2 processes x 4); auto_scale_lr stays off.
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(
    logger=dict(interval=4),
    checkpoint=dict(interval=4, max_keep_ckpts=2))
