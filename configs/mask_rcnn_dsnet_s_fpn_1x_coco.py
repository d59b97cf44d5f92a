_base_ = './mask_rcnn_dsnet_t_fpn_1x_coco.py'

pretrained = 'checkpoints/dsnet_s_in1k.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
