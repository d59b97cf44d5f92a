_base_ = './mask_rcnn_dsnet_s_fpn_1x_coco.py'

# DS-FPN: FPN plus one DS-Block (width 256, GroupNorm, global grid at 1/32 of
# the image) on each of P2-P5, after the top-down sum.
model = dict(
    neck=dict(
        type='DSFPN',
        num_ds_blocks=1,
        ds_position='pre_fpn_conv',
        ds_norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
    )
)
