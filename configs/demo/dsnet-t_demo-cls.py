# `make demo TASK=cls`: the DS-Net-T ImageNet classifier
# (configs/dsnet-t_8xb128_in1k.py) trained from scratch on the generated shapes
# classification set (tools/demo/make_demo_data.py --task cls: 64x64 images of
# one circle, square or triangle, 100 per class for training and 30 for
# validation), sized for a 2-core CPU shared with other work. This file holds
# the demo's deltas: its data, a short schedule, no ImageNet regularisation.
# Needs mmpretrain (requirements/classification.txt).
_base_ = '../dsnet-t_8xb128_in1k.py'

data_root = 'data/demo/cls/'
# The folder names; mmpretrain's CustomDataset numbers them in sorted order.
classes = ('circle', 'square', 'triangle')

# The base's normalisation (the Runner hands it to the model) for 3 classes.
data_preprocessor = dict(num_classes=len(classes))
model = dict(
    # Stage 4 (stride 32, 2x2 at 64 px) feeds the head. From scratch: no
    # ImageNet weights offline; no attention dropout or drop path on 300 images.
    backbone=dict(attn_drop_rate=0.0, drop_path_rate=0.0),
    head=dict(
        num_classes=len(classes),
        loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0),
    ),
    # No Mixup / CutMix.
    train_cfg=dict(_delete_=True),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=10,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1,))
test_evaluator = val_evaluator

# The schedule is in epochs, the same for any number of processes: with 2
# processes x 16 images an epoch is 10 iterations. Warm-up for 1 epoch, then a
# cosine to 0 (tests/configs/test_demo_schedule.py).
max_epochs = 6
warmup_epochs = 1
train_cfg = dict(max_epochs=max_epochs)
# The recipe's AdamW (no decay on norms and biases) at the demo's batch, clipped
# as training from scratch on few images needs.
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True,
    ),
    dict(
        type='CosineAnnealingLR',
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
auto_scale_lr = dict(enable=False, base_batch_size=32)

default_hooks = dict(
    logger=dict(interval=5, log_metric_by_epoch=True),
    checkpoint=dict(by_epoch=True, interval=max_epochs, max_keep_ckpts=1),
    # Off in training; tools/test.py --show-dir turns it on and draws every
    # image (interval=1), enlarged to 192 px so the label and score are legible.
    visualization=dict(interval=1, resize=192),
)
# BN statistics are per process under DDP: average them after every epoch, so
# validation and the checkpoint use the same ones. No EMA on a 60-step run.
custom_hooks = [dict(type='SyncBuffersHook')]
log_processor = dict(by_epoch=True, window_size=5)
