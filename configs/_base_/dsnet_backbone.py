# The DS-Net backbone of the root configs, written once. A config lists this
# file in its _base_ and sets
#     backbone=dict(_base_.dsnet_backbone, _delete_=True, <its deltas>)
# (_delete_ replaces the base model's ResNet entries instead of merging into
# them). Unset arguments keep DSNet's defaults: all four stages returned, none
# frozen, BN with trained affine parameters, BN statistics updated in training,
# stochastic depth 0.1, no attention dropout, no activation checkpointing.
custom_imports = dict(imports=['mmdsnet'], allow_failed_imports=False)

# ImageNet-1k weights converted with tools/model_converters/dsnet2mmdet.py
# (README, "Pretrained weights"); configs for other sizes override both.
pretrained = 'checkpoints/dsnet_t_in1k.pth'
dsnet_backbone = dict(
    type='DSNet', arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=pretrained)
)
