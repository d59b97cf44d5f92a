# DS-Net-S on ImageNet-1k with mmpretrain, the public code's DeiT recipe: 300 epochs,
# 8 GPUs x 128 images, AdamW lr 1e-3 (5e-4 per 512 images), weight decay 0.05, cosine
# to 1e-5 after 5 warm-up epochs from 1e-6, Mixup 0.8 / CutMix 1.0, label smoothing
# 0.1, RandAugment m9-mstd0.5-inc1, random erasing 0.25, repeated augmentation, EMA,
# bicubic; evaluation: short side 256 (bicubic), centre crop 224. The bases give the
# DeiT/Swin data pipeline and AdamW schedule; this file writes DS-Net's deltas.
# docs/configs.md, "Classification (mmpretrain)", lists the recipe and its deviations.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmdsnet'], allow_failed_imports=False)

# The public classifier: stage 4, its BatchNorm (final_norm), global average
# pooling and a linear head; `dsnet2mmdet.py --classifier` converts its weights.
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='DSNet',
        arch='small',
        out_indices=(3,),
        final_norm=True,
        # Hard-coded in the public code's attention (drop path 0.1: DSNet's default).
        attn_drop_rate=0.1,
    ),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02),
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

# 128 images per GPU; each image drawn 3 times per epoch (DeiT's repeated augmentation).
train_dataloader = dict(batch_size=128, sampler=dict(type='RepeatAugSampler', shuffle=True))

# 5 warm-up epochs from 1e-6 (1e-3 of the lr), then cosine to 1e-5 (the base's eta_min).
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5),
]

# Model EMA, decay 0.99996 per iteration.
custom_hooks = [dict(type='EMAHook', momentum=4e-5, priority='ABOVE_NORMAL')]
