"""The demo's synthetic "shapes" data (``make demo``, ``tools/demo/make_demo_data.py``),
also what the tests that train and evaluate end to end run on. Imports nothing of mmdsnet."""

from .synthetic_data import (
    CLS_CLASSES,
    COCO_CLASSES,
    SEG_CLASSES,
    generate_cls_data,
    generate_demo_data,
    render_scene,
    render_shape_image,
)

__all__ = [
    'CLS_CLASSES',
    'COCO_CLASSES',
    'SEG_CLASSES',
    'generate_cls_data',
    'generate_demo_data',
    'render_scene',
    'render_shape_image',
]
