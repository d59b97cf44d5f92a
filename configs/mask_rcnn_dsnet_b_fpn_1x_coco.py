_base_ = './mask_rcnn_dsnet_t_fpn_1x_coco.py'

# The only public DS-Net-B weights are PaddleClas'; the converter reads .pdparams.
pretrained = 'checkpoints/dsnet_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
