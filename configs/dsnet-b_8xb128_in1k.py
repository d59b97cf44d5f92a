# DS-Net-B on ImageNet-1k: the DS-Net-S recipe (same schedule, drop path 0.1).
_base_ = './dsnet-s_8xb128_in1k.py'

model = dict(backbone=dict(arch='base'))
