"""FP32SingleRoIExtractor: mmdet's SingleRoIExtractor with mmcv's RoIAlign run
in float32 under autocast, and the Mask R-CNN configs that use it."""

import glob
import os.path as osp

import pytest
import torch
from helpers import REPO_ROOT
from mmengine.config import Config

from mmdsnet.models import FP32SingleRoIExtractor

pytestmark = pytest.mark.usefixtures('mmdet_scope')

ROI_LAYER = dict(type='RoIAlign', output_size=7, sampling_ratio=0)
STRIDES = [4, 8, 16, 32]


def extractor(type_name):
    """Built by name from mmdet's registry, as a config does."""
    from mmdet.registry import MODELS

    assert MODELS.get('FP32SingleRoIExtractor') is FP32SingleRoIExtractor
    return MODELS.build(
        dict(type=type_name, roi_layer=ROI_LAYER, out_channels=8, featmap_strides=STRIDES)
    )


def feats_and_rois():
    """Four FPN levels of a 2-image batch (128x160) and RoIs of every level."""
    torch.manual_seed(0)
    feats = tuple(torch.randn(2, 8, 128 // s, 160 // s) for s in STRIDES)
    rois = torch.tensor(
        [
            [0, 4.0, 6.0, 30.0, 40.0],  # level 0
            [1, 10.0, 12.0, 90.0, 100.0],  # level 1
            [0, 0.0, 0.0, 150.0, 120.0],  # level 2
            [1, 2.5, 3.5, 60.5, 70.0],  # level 1
        ]
    )
    return feats, rois


def test_float32_inputs_give_the_stock_output():
    feats, rois = feats_and_rois()
    expected = extractor('SingleRoIExtractor')(feats, rois)
    out = extractor('FP32SingleRoIExtractor')(feats, rois)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=str)
def test_reduced_features_run_roi_align_in_float32(dtype, roi_align_dtypes):
    """Under autocast with reduced-precision features, RoIAlign gets float32
    features and RoIs; the result, in the features' dtype, is the float32
    extraction of the same (reduced) values, and gradients reach them."""
    feats, rois = feats_and_rois()
    reduced = tuple(f.to(dtype).requires_grad_() for f in feats)
    with torch.autocast('cpu', dtype=dtype):
        out = extractor('FP32SingleRoIExtractor')(reduced, rois)
    assert out.dtype == dtype
    assert set(roi_align_dtypes) == {(torch.float32, torch.float32)}
    expected = extractor('SingleRoIExtractor')(tuple(f.float() for f in reduced), rois)
    torch.testing.assert_close(out, expected.to(dtype), rtol=0, atol=0)
    out.float().sum().backward()
    assert all(f.grad is not None and f.grad.dtype == dtype for f in reduced[:3])
    assert all(torch.isfinite(f.grad.float()).all() for f in reduced[:3])


def test_stock_extractor_hands_roi_align_bfloat16(roi_align_dtypes):
    """What the extractor fixes: mmdet's own casts the RoIs to the bf16
    features, and mmcv has no bf16 RoIAlign kernel."""
    feats, rois = feats_and_rois()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with pytest.raises(NotImplementedError, match='BFloat16'):
            extractor('SingleRoIExtractor')(tuple(f.bfloat16() for f in feats), rois)
    assert roi_align_dtypes[0] == (torch.bfloat16, torch.bfloat16)


MASK_RCNN_CONFIGS = sorted(
    glob.glob(osp.join(REPO_ROOT, 'configs', 'mask_rcnn_*.py'))
    + glob.glob(osp.join(REPO_ROOT, 'configs', 'demo', 'mask_rcnn_*.py'))
)


@pytest.mark.parametrize(
    'path', MASK_RCNN_CONFIGS, ids=[osp.relpath(p, REPO_ROOT) for p in MASK_RCNN_CONFIGS]
)
def test_mask_rcnn_configs_extract_rois_in_float32(path):
    roi_head = Config.fromfile(path).model.roi_head
    assert roi_head.bbox_roi_extractor.type == 'FP32SingleRoIExtractor'
    assert roi_head.mask_roi_extractor.type == 'FP32SingleRoIExtractor'
    assert roi_head.bbox_roi_extractor.roi_layer.type == 'RoIAlign'
