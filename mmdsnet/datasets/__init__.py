"""Dataset helpers for mmdsnet (kept free of mmdet/mmseg imports)."""
from .demo_data import (COCO_CLASSES, COCO_PALETTE, SEG_CLASSES, SEG_PALETTE,
                        generate_demo_data, render_scene)

__all__ = [
    'COCO_CLASSES', 'COCO_PALETTE', 'SEG_CLASSES', 'SEG_PALETTE',
    'generate_demo_data', 'render_scene'
]
