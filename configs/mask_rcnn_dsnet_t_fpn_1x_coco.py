# Mask R-CNN 1x with DS-Net-T + FPN on COCO 2017 (PVT protocol: 8 GPUs x 2
# images, 12 epochs, 1333x800, AdamW lr 2e-4, weight decay 1e-4).
# Only DS-Net's deltas are written here; everything else is mmdet's.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/dsnet_backbone.py']

model = dict(
    backbone=dict(
        _base_.dsnet_backbone,
        _delete_=True,
        # 2 images per GPU: keep the ImageNet BN statistics frozen. For
        # SyncBN instead: norm_cfg=dict(type='SyncBN'), norm_eval=False (GPUs only).
        norm_eval=True,
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
    # RoIAlign in float32 under --amp: mmcv's has no bf16 kernel, and its fp16
    # backward is slow (docs/configs.md, "RoIAlign under AMP").
    roi_head=dict(
        bbox_roi_extractor=dict(type='FP32SingleRoIExtractor'),
        mask_roi_extractor=dict(type='FP32SingleRoIExtractor'),
    ),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    # No weight decay on any norm layer (BN, LN, GN).
    paramwise_cfg=dict(norm_decay_mult=0.0),
)

# lr 2e-4 is for 8 GPUs x 2 images; `--auto-scale-lr` rescales it linearly.
auto_scale_lr = dict(enable=False, base_batch_size=16)
