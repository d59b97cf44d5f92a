# Semantic FPN with DS-Net-T on ADE20K (PVT protocol: 512x512 crops, 40k
# iterations, 4 GPUs x 8 images = 32, AdamW lr 2e-4, poly decay).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
    './_base_/dsnet_backbone.py',
]

crop_size = (512, 512)
# SyncBN across GPUs (batch 8 per GPU, statistics are trained). On CPU it
# becomes BN: mmengine reverts SyncBN in non-distributed runs and
# mmdsnet.engine (patch_cpu_distributed) does it in CPU multi-process (gloo) runs.
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(_base_.dsnet_backbone, _delete_=True, norm_cfg=norm_cfg),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150, norm_cfg=norm_cfg),
)

train_dataloader = dict(batch_size=8)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)]
# lr 2e-4 is for 32 images per step; `--auto-scale-lr` rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=32)
