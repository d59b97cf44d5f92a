_base_ = './retinanet_dsnet_s_fpn_1x_coco.py'

# DS-FPN with DSFPN's defaults: one DS-Block (width 256, GroupNorm, global
# grid at 1/32 of the image) on each of P3-P5, after the top-down sum; P6/P7 as in FPN.
model = dict(neck=dict(type='DSFPN'))
