_base_ = './fpn_dsnet-s_4xb8-40k_ade20k-512x512.py'

# Semantic FPN whose neck is DS-FPN: one DS-Block (width 256, global grid at
# 1/32 of the image) on each of P2-P5. Batch 8 per GPU, so its norm can be
# SyncBN like the rest of the model.
model = dict(neck=dict(type='DSFPN', ds_norm_cfg=dict(type='SyncBN', requires_grad=True)))
