_base_ = './fpn_dsnet-t_4xb8-40k_ade20k-512x512.py'

pretrained = 'checkpoints/dsnet_s_in1k.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.2, init_cfg=dict(checkpoint=pretrained)))
