# RetinaNet 1x with DS-Net-T + FPN on COCO 2017 (PVT protocol: 8 GPUs x 2
# images, 12 epochs, 1333x800, AdamW lr 1e-4, weight decay 1e-4).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', './_base_/dsnet_backbone.py']

model = dict(
    backbone=dict(
        _base_.dsnet_backbone,
        _delete_=True,
        # Stage 1 is computed but not returned: DSNet has no per-output
        # layers, so nothing is left without a gradient under DDP.
        out_indices=(1, 2, 3),
        # 2 images per GPU: keep the ImageNet BN statistics frozen.
        norm_eval=True,
    ),
    # P3-P5 from the backbone, P6 from C5 ('on_input'), P7 from P6.
    neck=dict(in_channels=[128, 320, 512], start_level=0, add_extra_convs='on_input', num_outs=5),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)

auto_scale_lr = dict(enable=False, base_batch_size=16)
