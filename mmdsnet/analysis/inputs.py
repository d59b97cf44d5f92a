"""Inputs the measuring tools share: argument types, input settings, precisions,
and a Mask R-CNN with a batch, built from a config of mmdet or of this package."""

import argparse
import os
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.registry import init_default_scope

from ..models import DSNet
from ..utils import load_config_file

#: The precisions every tool accepts: the autocast dtype (None: fp32, no autocast).
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
#: Configs of this package, resolved from the installed package (``.mim/configs``)
#: or from the ``config_dir`` a caller gives (a source checkout's ``configs/``).
PACKAGE_PREFIX = 'mmdsnet::'


# ---------------------------------------------------------------------------
# argparse types: a bad value is a usage error (exit 2) naming the argument
# ---------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """An int of at least 1 (batches, trials, table rows)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number of at least 1')
    return value


def image_side(text: str) -> int:
    """An image side in pixels, at least DSNet's smallest input (32)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < DSNet.min_input_size:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not an image side: DSNet needs a whole number of pixels '
            f'>= {DSNet.min_input_size}'
        )
    return value


def image_size(text: str) -> Tuple[int, int]:
    """'HxW' (or one side for both) -> (H, W), each an :func:`image_side`."""
    height, _, width = text.partition('x')
    try:
        return image_side(height), image_side(width or height)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an image size 'HxW' with both sides >= {DSNet.min_input_size} "
            "(e.g. '800x1333')"
        ) from None


def _writable_folder(path: str, what: str) -> None:
    """The folder ``path`` can be made and written: its nearest existing
    ancestor is a writable directory."""
    folder = osp.abspath(path)
    while not osp.exists(folder):
        folder = osp.dirname(folder)
    if not osp.isdir(folder):
        raise argparse.ArgumentTypeError(f'{what}: {folder} is a file, not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f'{what}: the folder {folder} is not writable')


def output_file(path: str) -> str:
    """A file the tool may write at the end of its run (its folder is made):
    checked first, so a long run does not fail at its last step."""
    if osp.isdir(path):
        raise argparse.ArgumentTypeError(f'{path} is a folder; a file name is expected')
    _writable_folder(osp.dirname(osp.abspath(path)), path)
    return path


def output_dir(path: str) -> str:
    """A folder the tool writes into (made if missing), not an existing file."""
    if osp.exists(path) and not osp.isdir(path):
        raise argparse.ArgumentTypeError(f'{path} exists and is not a folder')
    _writable_folder(path, path)
    return path


def image_file(path: str) -> str:
    """An existing, non-empty image file."""
    if not osp.isfile(path):
        raise argparse.ArgumentTypeError(f'{path}: no such image file')
    if osp.getsize(path) == 0:
        raise argparse.ArgumentTypeError(f'{path} is empty (0 bytes); an image file is expected')
    return path


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


def split_choices(text: str, kind: str, accepted: Sequence[str], allow_empty=False) -> list:
    """The comma-separated names of ``text``, each one of ``accepted``; ValueError otherwise."""
    names = [n for n in text.split(',') if n]
    unknown = [n for n in names if n not in accepted]
    if unknown or not (names or allow_empty):
        raise ValueError(f'unknown {kind} {unknown or names}; choose from {list(accepted)}')
    return names


def autocast(device_type: str, precision: str):
    """torch.autocast to ``precision``'s dtype, or a disabled one for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def build_detector(config: str, options: Optional[dict] = None, config_dir: Optional[str] = None):
    """The detector of ``config`` without backbone weights.

    ``config`` is a path, an ``mmdet::`` name, or an ``mmdsnet::`` name, looked
    up in ``config_dir`` when given (else in the installed package's configs).
    ``options`` are merged as ``--cfg-options`` are (``{'model.backbone.with_cp': True}``).
    """
    if config_dir and config.startswith(PACKAGE_PREFIX):
        config = osp.join(config_dir, config[len(PACKAGE_PREFIX) :])
    init_default_scope('mmdet')
    cfg = load_config_file(config)
    cfg.model.backbone.init_cfg = None
    cfg.merge_from_dict(options or {})
    return MODELS.build(cfg.model)


def detector_batch(model, device, height: int = 800, width: int = 1333) -> dict:
    """Two images of ``height`` x ``width`` with 8 boxes and masks each, preprocessed
    by the model and moved to ``device``: the arguments of ``model(**batch)``."""
    packed = demo_mm_inputs(
        2, [[3, height, width]] * 2, num_items=[8, 8], num_classes=80, with_mask=True
    )
    data = model.data_preprocessor(packed, training=True)
    return {
        'inputs': data['inputs'].to(device),
        'data_samples': [s.to(device) for s in data['data_samples']],
    }
