"""Inputs the measuring tools share: input settings and a Mask R-CNN with a batch."""

from typing import Optional


def parse_setting(setting: str) -> tuple:
    """'800x1344 b2' or '224 b64' -> (batch, height, width)."""
    try:
        size, batch = setting.split()
        height, _, width = size.partition('x')
        if not batch.startswith('b'):
            raise ValueError
        return int(batch[1:]), int(height), int(width or height)
    except ValueError:
        raise ValueError(
            f"input setting {setting!r} is not 'HxW bN' or 'S bN' (e.g. '800x1344 b2', '224 b64')"
        ) from None


def build_detector(config: str, backbone_overrides: Optional[dict] = None):
    """The config's detector (a path or an ``mmdet::`` name) without backbone weights."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    from mmdsnet.utils import load_config_file

    init_default_scope('mmdet')
    cfg = load_config_file(config)
    cfg.model.backbone.update(init_cfg=None, **(backbone_overrides or {}))
    return MODELS.build(cfg.model)


def detector_batch(model, device, height: int = 800, width: int = 1333) -> dict:
    """Two images of ``height`` x ``width`` with 8 boxes and masks each, preprocessed
    by the model and moved to ``device``: the arguments of ``model(**batch)``."""
    from mmdet.testing import demo_mm_inputs

    packed = demo_mm_inputs(
        2, [[3, height, width]] * 2, num_items=[8, 8], num_classes=80, with_mask=True
    )
    data = model.data_preprocessor(packed, training=True)
    return {
        'inputs': data['inputs'].to(device),
        'data_samples': [s.to(device) for s in data['data_samples']],
    }
