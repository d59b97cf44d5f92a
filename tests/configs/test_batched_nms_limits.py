"""How many boxes our RPN and RetinaNet configs hand to mmcv's ``batched_nms``.

mmcv 2.1 (mmcv/ops/nms.py, ``batched_nms``) runs one NMS over all boxes while
``boxes.shape[0] < split_thr`` (10,000 unless the nms config sets it), and
one NMS per level/class otherwise. That second branch fails under CUDA AMP
(open-mmlab/mmdetection#9727): the box decoder's ``exp`` runs in float32, so
boxes are float32 while sigmoid scores stay float16, and writing float32
scores into a float16 buffer raises. These tests compute, from each built
config, the most boxes each head can pass (per level ``min(nms_pre,
candidates)``, candidates counted at the largest pipeline scale with the
padding) and check that mmcv takes the single-NMS branch for that many.
The R-CNN stage (``multiclass_nms``, up to proposals x classes boxes) is not
counted: its softmax scores run in float32 under autocast, like its boxes.
"""

import inspect
import math
import os.path as osp
import re

import pytest
import torch
from helpers import REPO_ROOT
from mmcv.ops import batched_nms
from mmengine.config import Config

pytestmark = pytest.mark.usefixtures('mmdet_scope')


def mmcv_split_thr() -> int:
    """The default ``split_thr`` of the installed mmcv's ``batched_nms``."""
    found = re.findall(r"pop\('split_thr', (\d+)\)", inspect.getsource(batched_nms))
    assert len(found) == 1, 'mmcv changed batched_nms; read it again'
    return int(found[0])


def largest_image(pipeline) -> tuple:
    """(short, long) bound of any resized image of ``pipeline``: with
    ``keep_ratio`` the image fits in the scale's long and short sides."""
    sides = []
    for step in pipeline:
        if step['type'] == 'Resize':
            sides.append(step['scale'])
        elif step['type'] == 'RandomChoiceResize':
            sides.extend(step['scales'])
        elif 'Resize' in step['type'] or 'Crop' in step['type']:
            raise NotImplementedError(f'count boxes for {step["type"]} too')
    assert sides, 'no Resize in the pipeline'
    return max(min(s) for s in sides), max(max(s) for s in sides)


def featmap_sides(image: tuple, divisor: int, strides) -> list:
    """Feature map (h, w) per level: the padded image over the stride,
    rounded up (DS-Net's stages, FPN's 1x1 max-pool and RetinaNet's 3x3
    stride-2 extra convs all round up; checked against real models below)."""
    padded = [math.ceil(side / divisor) * divisor for side in image]
    return [tuple(math.ceil(side / s) for side in padded) for s in strides]


def boxes_to_nms(cfg) -> dict:
    """Most boxes per image each head stage hands to ``batched_nms``."""
    from mmdet.registry import TASK_UTILS

    model = cfg.model
    divisor = model.data_preprocessor.get('pad_size_divisor', 1)
    train_image = largest_image(cfg.train_dataloader.dataset.pipeline)
    test_image = largest_image(cfg.test_dataloader.dataset.pipeline)
    counts = {}
    if 'rpn_head' in model:
        head = model.rpn_head
        assert head.type == 'RPNHead', head.type
        stages = {
            'rpn train': (train_image, model.train_cfg.rpn_proposal.nms_pre, 1),
            'rpn test': (test_image, model.test_cfg.rpn.nms_pre, 1),
        }
    else:
        head = model.bbox_head
        assert head.type == 'RetinaHead', head.type
        stages = {'retinanet test': (test_image, model.test_cfg.nms_pre, head.num_classes)}
    generator = TASK_UTILS.build(head.anchor_generator)
    strides = [s[0] if isinstance(s, (tuple, list)) else s for s in generator.strides]
    for stage, (image, nms_pre, classes) in stages.items():
        total = 0
        for (h, w), anchors in zip(
            featmap_sides(image, divisor, strides), generator.num_base_priors
        ):
            # rpn_head: topk when 0 < nms_pre < candidates; RetinaNet:
            # filter_scores_and_topk over (anchor, class) pairs.
            candidates = h * w * anchors * classes
            total += min(nms_pre, candidates) if nms_pre > 0 else candidates
        counts[stage] = total
    return counts


def count_nms_calls(num_boxes: int, nms_cfg: dict) -> int:
    """How many NMS runs ``batched_nms`` makes for ``num_boxes`` boxes on 5 levels."""
    calls = []

    def nms_op(boxes, scores, **kwargs):
        calls.append(len(boxes))
        return torch.cat([boxes, scores[:, None]], 1), torch.arange(len(boxes))

    boxes = torch.rand(num_boxes, 4).sort(dim=1).values * 100
    levels = torch.arange(num_boxes) % 5
    batched_nms(boxes, torch.rand(num_boxes), levels, dict(nms_cfg, type=nms_op))
    return len(calls)


def test_feature_map_sides_match_the_models():
    from mmdet.registry import MODELS

    for name in ('demo/mask_rcnn_dsnet_t_dsfpn_demo.py', 'retinanet_dsnet_t_fpn_1x_coco.py'):
        cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', name))
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model).eval()
        head = cfg.model.get('rpn_head', cfg.model.get('bbox_head'))
        strides = head.anchor_generator.strides
        with torch.no_grad():
            feats = model.extract_feat(torch.zeros(1, 3, 224, 96))
        assert [tuple(f.shape[2:]) for f in feats] == featmap_sides((224, 96), 32, strides)


def test_split_branch_starts_at_split_thr():
    """``<``: split_thr - 1 boxes take one NMS, split_thr boxes one per level."""
    split_thr = mmcv_split_thr()
    assert count_nms_calls(split_thr - 1, dict(iou_threshold=0.7)) == 1
    assert count_nms_calls(split_thr, dict(iou_threshold=0.7)) == 5


def test_split_branch_fails_with_float16_scores():
    """The AMP failure, on CPU: float32 boxes, float16 scores (as under CUDA
    autocast); mmcv's CPU kernel takes them, the split branch does not."""
    split_thr = mmcv_split_thr()
    torch.manual_seed(0)
    corners = torch.rand(split_thr, 2) * 1000
    boxes = torch.cat([corners, corners + torch.rand(split_thr, 2) * 50 + 1], 1)
    scores, levels = torch.rand(split_thr).half(), torch.arange(split_thr) % 5
    nms_cfg = dict(type='nms', iou_threshold=0.7)
    dets, _ = batched_nms(boxes[:-1], scores[:-1], levels[:-1], nms_cfg)
    assert dets.dtype == torch.float32
    with pytest.raises(RuntimeError, match='dtypes match'):
        batched_nms(boxes, scores, levels, nms_cfg)


def test_configs_stay_below_split_thr(det_config_path):
    cfg = Config.fromfile(det_config_path)
    counts = boxes_to_nms(cfg)
    assert counts, det_config_path
    head = cfg.model.get('rpn_head', cfg.model.get('bbox_head'))
    for stage, boxes in counts.items():
        if stage == 'rpn train':
            nms_cfg = cfg.model.train_cfg.rpn_proposal.nms
        elif stage == 'rpn test':
            nms_cfg = cfg.model.test_cfg.rpn.nms
        else:
            nms_cfg = cfg.model.test_cfg.nms
        split_thr = nms_cfg.get('split_thr', mmcv_split_thr())
        name = osp.basename(det_config_path)
        print(f'{name} {head.type} {stage}: {boxes} boxes (split_thr {split_thr})')
        assert boxes < split_thr, (stage, boxes)
        assert count_nms_calls(boxes, dict(nms_cfg, type='nms')) == 1
