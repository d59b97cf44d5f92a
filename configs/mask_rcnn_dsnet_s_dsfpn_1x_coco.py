_base_ = './mask_rcnn_dsnet_s_fpn_1x_coco.py'

# DS-FPN with DSFPN's defaults: FPN plus one DS-Block (width 256, GroupNorm,
# global grid at 1/32 of the image) on each of P2-P5, after the top-down sum.
model = dict(neck=dict(type='DSFPN'))
