# UperNet with DS-Net-S on ADE20K (Swin protocol: 512x512 crops, 160k
# iterations, 8 GPUs x 2 images = 16, AdamW lr 6e-5, weight decay 0.01,
# 1500 warm-up iterations then linear (poly 1.0) decay).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    './_base_/dsnet_backbone.py',
]

crop_size = (512, 512)
pretrained = 'checkpoints/dsnet_s_in1k.pth'
# SyncBN for heads and backbone across GPUs; with 2 images per GPU the
# statistics are synchronised over 16 images. Reverted to BN on CPU (see the
# Semantic FPN config).
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _base_.dsnet_backbone,
        _delete_=True,
        arch='small',
        drop_path_rate=0.3,
        norm_cfg=norm_cfg,
        init_cfg=dict(_base_.dsnet_backbone.init_cfg, checkpoint=pretrained),
    ),
    decode_head=dict(in_channels=[64, 128, 320, 512], num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=320, in_index=2, num_classes=150, norm_cfg=norm_cfg),
)

train_dataloader = dict(batch_size=2)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
