"""mmdet's ``SingleRoIExtractor`` with RoIAlign in float32 under autocast.

mmdet 3.x casts the RoIs down to the features' dtype, so under AMP mmcv's
RoIAlign runs in half precision: its CUDA backward then adds into fp16
gradients with plain atomics (48 of 128 ms of kernel time of a Mask R-CNN
AMP iteration on an H100, docs/performance.md), and it has no bfloat16
kernel at all, on the CPU nor on CUDA, so bf16 AMP cannot train Mask R-CNN.
torchvision's ``roi_align`` is a float32 op under autocast for the same
reasons, and mmdet 2.x forced its RoI extractors to float32.
"""

from typing import Optional, Tuple

import torch
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS

#: Feature dtypes the extractor computes in float32.
REDUCED_DTYPES = (torch.float16, torch.bfloat16)


def _in_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in REDUCED_DTYPES else tensor


@MODELS.register_module()
class FP32SingleRoIExtractor(SingleRoIExtractor):
    """``SingleRoIExtractor`` (same arguments, same output) whose RoI layers
    run with autocast off, on float32 features and RoIs.

    The RoI features come back in the dtype of the input features, as from
    ``SingleRoIExtractor``, so the heads after it run as before; the
    float16/bfloat16 features are cast up (a copy per level) and the output
    down. Float32 and float64 inputs pass through unchanged.
    """

    def forward(
        self,
        feats: Tuple[torch.Tensor],
        rois: torch.Tensor,
        roi_scale_factor: Optional[float] = None,
    ) -> torch.Tensor:
        dtype = feats[0].dtype
        with torch.autocast(feats[0].device.type, enabled=False):
            roi_feats = super().forward(
                tuple(_in_float32(f) for f in feats), _in_float32(rois), roi_scale_factor
            )
        return roi_feats.to(dtype)
