"""Deterministic synthetic "shapes" dataset for the CPU demos.

Generates small scenes (textured, noisy background plus 0..5 coloured
circles / squares / triangles, later objects occluding earlier ones) and
writes them twice: as a COCO instance-segmentation dataset for mmdet and as
an ADE20K-style semantic-segmentation dataset for mmseg. It is small and
easy enough that a Mask R-CNN learns it on 2 CPU cores in minutes, but not
trivial (noise, texture, occlusion, odd image sizes).

Layout under ``out``::

    meta.json                            parameters + version (idempotency)
    coco/annotations/instances_{train,val}.json
    coco/{train,val}/NNNNNN.png          RGB images
    seg/images/{train,val}/NNNNNN.png    same images as coco/
    seg/annotations/{train,val}/NNNNNN.png  uint8 label maps

COCO part: category ids 1..3 named ``COCO_CLASSES``; image ids 1..N and
annotation ids 1..M per split; ``file_name`` relative to the split folder.
Instance masks are stored alternately as polygons (only where the polygon
reproduces the visible mask pixel-exactly, e.g. not for masks with holes)
and as compressed RLE (``counts`` as str, ``iscrowd=0``); load them with
``LoadAnnotations(with_mask=True, poly2mask=True)`` (mmdet's default; with
``poly2mask=False`` mmdet ignores RLE instances). ``bbox`` is the tight
``[x, y, w, h]`` box of the visible mask and ``area`` its pixel count. An
object is only placed if it leaves every earlier object at least
``MIN_VISIBLE_FRAC`` of its own area and ``MIN_VISIBLE_AREA`` pixels, so no
painted object is ever left unannotated.

Semantic label convention (``SEG_CLASSES``)::

    0   unlabelled (a 2-px frame around each map) -> ignored
    1   background (a real class)
    2   circle, 3 square, 4 triangle

Use mmseg's ``BaseSegDataset`` with ``reduce_zero_label=True`` (0 -> 255
ignore, k -> k-1), ``img_suffix='.png'``, ``seg_map_suffix='.png'``,
``metainfo=dict(classes=SEG_CLASSES)`` and ``num_classes=4`` in the decode
head. (``ADE20KDataset`` itself refuses these class names, as they are not a
subset of its 150 ADE classes.)

The classification demo has its own set (:func:`generate_cls_data`): one
shape per 64x64 image in mmpretrain's ``CustomDataset`` folders
``{train,val}/<class>/``, classes ``CLS_CLASSES``.

Same parameters give byte-identical files. It is test and demo data, not a
dataset class: mmdet's ``CocoDataset``, mmseg's ``BaseSegDataset`` and
mmpretrain's ``CustomDataset`` read it.
"""

import json
import os
import os.path as osp
import shutil
import time
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    'CLS_CLASSES',
    'COCO_CLASSES',
    'SEG_CLASSES',
    'COCO_PALETTE',
    'SEG_PALETTE',
    'DATA_VERSION',
    'SEG_IGNORE_INDEX',
    'SEG_BACKGROUND_INDEX',
    'generate_cls_data',
    'generate_demo_data',
    'render_scene',
    'render_shape_image',
]

#: Bump when the generated content changes, so stale outputs are rebuilt.
DATA_VERSION = 1

COCO_CLASSES = ('circle', 'square', 'triangle')
SEG_CLASSES = ('background',) + COCO_CLASSES
# RGB, one per class (object colours are jittered around these bases).
COCO_PALETTE = [(215, 50, 45), (45, 170, 60), (50, 80, 210)]
SEG_PALETTE = [(120, 120, 120)] + COCO_PALETTE

SEG_IGNORE_INDEX = 0  # raw value of unlabelled pixels (before reduce_zero_label)
SEG_BACKGROUND_INDEX = 1  # raw value of background; class k -> k + 2
SEG_BORDER = 2  # width in px of the unlabelled frame in every label map

# (height, width); most deliberately not multiples of 32.
IMAGE_SIZES = (
    (256, 320),
    (250, 300),
    (288, 224),
    (300, 250),
    (224, 288),
    (270, 270),
    (240, 310),
    (320, 256),
)
OBJECT_SIZE_RANGE = (24, 110)  # extent of an object's bounding box, px
MAX_OBJECTS = 5
EMPTY_FRACTION = 0.1  # share of images without objects (rounded up)
MIN_VISIBLE_FRAC = 0.5
MIN_VISIBLE_AREA = 64
PLACEMENT_TRIES = 30

# The classification set: one shape per square image, the folder names sorted
# as mmpretrain's CustomDataset sorts them.
CLS_CLASSES = tuple(sorted(COCO_CLASSES))
CLS_DATA_VERSION = 1
CLS_IMAGE_SIZE = 64  # px; DS-Net takes >= 32
CLS_OBJECT_SIZE_RANGE = (20, 52)  # extent of the shape's bounding box, px


# --------------------------------------------------------------------------
# Scene rendering
# --------------------------------------------------------------------------
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted, textured float RGB background: tint + blobs + lines."""
    base = rng.uniform(80, 170) + rng.uniform(-15, 15, size=3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    # Low- and mid-frequency texture, smooth via interpolation; mostly
    # brightness with a little chroma so objects stand out by saturation.
    low = (rng.normal(0, 25, size=(6, 6, 1)) + rng.normal(0, 10, size=(6, 6, 3))).astype(np.float32)
    img += cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    mid = (
        rng.normal(0, 12, size=(h // 8, w // 8, 1)) + rng.normal(0, 5, size=(h // 8, w // 8, 3))
    ).astype(np.float32)
    img += cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)
    # A few desaturated distractor lines.
    for _ in range(int(rng.integers(3, 9))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        grey = rng.uniform(40, 210)
        colour = tuple(float(grey + d) for d in rng.uniform(-12, 12, size=3))
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _shape_polygon(rng: np.random.Generator, label: int, size: float) -> np.ndarray:
    """Vertices (N, 2) of a shape of class ``label``, bbox extent ``size``."""
    if label == 0:  # circle
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif label == 1:  # square, mildly rotated
        theta = np.deg2rad(rng.uniform(-25, 25))
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        pts = corners @ rot.T
    else:  # triangle, roughly equilateral, any orientation
        angles = (
            rng.uniform(0, 2 * np.pi)
            + np.arange(3) * 2 * np.pi / 3
            + np.deg2rad(rng.uniform(-8, 8, size=3))
        )
        radii = rng.uniform(0.9, 1.1, size=3)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    pts = pts - pts.min(axis=0)
    return pts * (size / pts.max())


def _rasterize(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    """Filled boolean mask of a float polygon (sub-pixel precision)."""
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 8).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=3)
    return mask.astype(bool)


def _place_objects(
    rng: np.random.Generator, h: int, w: int, num_objects: int
) -> List[Tuple[int, np.ndarray]]:
    """Place up to ``num_objects`` shapes; returns (label, full mask) list.

    A candidate is rejected (and re-drawn) if it would hide too much of an
    earlier object, so every painted object keeps a usable visible area.
    """
    objects: List[Tuple[int, np.ndarray]] = []
    visible: List[np.ndarray] = []
    lo, hi = OBJECT_SIZE_RANGE
    hi = min(hi, min(h, w) - 4)
    for _ in range(num_objects):
        label = int(rng.integers(len(COCO_CLASSES)))
        for _ in range(PLACEMENT_TRIES):
            size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            pts = _shape_polygon(rng, label, size)
            ext = pts.max(axis=0)
            offset = rng.uniform([1, 1], [w - 2 - ext[0], h - 2 - ext[1]])
            mask = _rasterize(pts + offset, h, w)
            ok = all(
                (vis & ~mask).sum() >= max(MIN_VISIBLE_FRAC * full.sum(), MIN_VISIBLE_AREA)
                for (_, full), vis in zip(objects, visible)
            )
            if ok and mask.sum() >= MIN_VISIBLE_AREA:
                visible = [vis & ~mask for vis in visible] + [mask]
                objects.append((label, mask))
                break
    return objects


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, base) -> None:
    """Paint ``mask`` in a colour jittered around ``base`` (RGB), shaded linearly
    across the object so it is not a flat patch."""
    colour = np.array(base, np.float32) + rng.uniform(-25, 25, size=3).astype(np.float32)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-6
    ys, xs = np.nonzero(mask)
    extent = max(xs.max() - xs.min(), ys.max() - ys.min(), 1)
    proj = ((xs - xs.mean()) * direction[0] + (ys - ys.mean()) * direction[1]) / extent
    img[mask] = colour + (proj * rng.uniform(20, 50))[:, None]


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add pixel noise to a float scene and round it to uint8."""
    img += rng.normal(0, 8, size=img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_scene(
    rng: np.random.Generator, height: int, width: int, num_objects: int
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Render one scene.

    Returns the RGB uint8 image and a list of ``(label, visible_mask)`` in
    painting order (label is 0-based into ``COCO_CLASSES``).
    """
    img = _background(rng, height, width)
    objects = _place_objects(rng, height, width, num_objects)
    for label, mask in objects:
        _paint(rng, img, mask, COCO_PALETTE[label])
    img = _finish(rng, img)

    annotated = []
    occluder = np.zeros((height, width), bool)
    for label, mask in reversed(objects):
        annotated.append((label, mask & ~occluder))
        occluder |= mask
    return img, annotated[::-1]


# --------------------------------------------------------------------------
# Annotation encoding
# --------------------------------------------------------------------------
def _mask_to_polygons(mask: np.ndarray) -> Optional[List[List[float]]]:
    """Exact COCO polygons of ``mask``, or None if polygons cannot express it.

    Contours are traced on a 2x nearest-upsampled mask and mapped back, so
    the polygon follows pixel edges and pycocotools rasterizes it back to the
    same pixels; masks with holes (or any mismatch) return None.
    """
    h, w = mask.shape
    up = cv2.resize(mask.astype(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [
        ((c.reshape(-1, 2).astype(np.float64) + 0.5) / 2).ravel().tolist() for c in contours
    ]
    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
        return None
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    if not np.array_equal(mask_utils.decode(rle).astype(bool), mask):
        return None
    return polygons


def _mask_to_rle(mask: np.ndarray) -> Dict:
    """Compressed RLE with ``counts`` as str so it is JSON serialisable."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode('ascii'))


def _coco_annotation(mask: np.ndarray, label: int, ann_id: int, image_id: int) -> Dict:
    """COCO annotation dict; odd ids try polygons, the rest use RLE."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    segmentation = _mask_to_polygons(mask) if ann_id % 2 == 1 else None
    if segmentation is None:
        segmentation = _mask_to_rle(mask)
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=label + 1,
        segmentation=segmentation,
        area=float(mask.sum()),
        bbox=bbox,
        iscrowd=0,
    )


def _png_bytes(img: np.ndarray) -> bytes:
    """PNG-encode (RGB or single channel) deterministically."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode('.png', img)
    if not ok:
        raise RuntimeError('PNG encoding failed')
    return buf.tobytes()


def _write(path: str, data: bytes) -> None:
    """Write bytes to ``path`` (binary, overwriting)."""
    with open(path, 'wb') as f:
        f.write(data)


# --------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------
def _generate_split(
    out: str, split: str, split_index: int, num_images: int, seed: int
) -> Dict[str, int]:
    """Render one split and write its COCO json, images and label maps."""
    coco_dir = osp.join(out, 'coco', split)
    seg_img_dir = osp.join(out, 'seg', 'images', split)
    seg_ann_dir = osp.join(out, 'seg', 'annotations', split)
    for d in (coco_dir, seg_img_dir, seg_ann_dir):
        os.makedirs(d, exist_ok=True)

    split_rng = np.random.default_rng([seed, split_index])
    num_empty = int(np.ceil(EMPTY_FRACTION * num_images))
    empty = set(split_rng.permutation(num_images)[:num_empty].tolist())
    # Cycle through the sizes in a shuffled order so every size shows up.
    size_order = split_rng.permutation(num_images)

    images, annotations = [], []
    for idx in range(num_images):
        # One generator per image: images do not depend on each other.
        rng = np.random.default_rng([seed, split_index, idx])
        height, width = IMAGE_SIZES[size_order[idx] % len(IMAGE_SIZES)]
        num_objects = 0 if idx in empty else int(rng.integers(1, MAX_OBJECTS + 1))
        img, objects = render_scene(rng, height, width, num_objects)

        image_id = idx + 1
        file_name = f'{idx:06d}.png'
        images.append(dict(id=image_id, file_name=file_name, height=height, width=width))
        seg = np.full((height, width), SEG_BACKGROUND_INDEX, np.uint8)
        for label, mask in objects:
            annotations.append(_coco_annotation(mask, label, len(annotations) + 1, image_id))
            seg[mask] = label + 2
        b = SEG_BORDER
        if b > 0:
            seg[:b, :] = seg[-b:, :] = seg[:, :b] = seg[:, -b:] = SEG_IGNORE_INDEX

        img_png = _png_bytes(img)
        _write(osp.join(coco_dir, file_name), img_png)
        _write(osp.join(seg_img_dir, file_name), img_png)
        _write(osp.join(seg_ann_dir, file_name), _png_bytes(seg))

    coco = dict(
        info=dict(description='mmdsnet synthetic shapes demo', version=str(DATA_VERSION)),
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(COCO_CLASSES)
        ],
    )
    ann_dir = osp.join(out, 'coco', 'annotations')
    os.makedirs(ann_dir, exist_ok=True)
    with open(osp.join(ann_dir, f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    return dict(images=len(images), instances=len(annotations))


def _read_meta(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _up_to_date(out: str, params: Dict, required: List[str]) -> Optional[Dict]:
    """The meta.json of ``out`` if it records a complete run with ``params`` and
    every ``required`` path (relative to ``out``) exists, else None."""
    meta = _read_meta(osp.join(out, 'meta.json'))
    if (
        meta is not None
        and meta.get('complete')
        and meta.get('params') == params
        and all(osp.exists(osp.join(out, p)) for p in required)
    ):
        return meta
    return None


def _start_output(out: str, owned: List[str], params: Dict, force: bool) -> None:
    """Remove a previous output (its ``owned`` folders) and mark ``out`` as
    incomplete until :func:`_finish_output`. Folders without a meta.json beside
    them are someone else's: only removed with ``force``."""
    paths = [osp.join(out, d) for d in owned]
    if _read_meta(osp.join(out, 'meta.json')) is None and not force:
        found = [d for d, p in zip(owned, paths) if osp.exists(p)]
        if found:
            raise FileExistsError(
                f'{out} has {", ".join(d + "/" for d in found)} but no meta.json; refusing '
                'to overwrite without force=True (--force)'
            )
    for p in paths:
        if osp.exists(p):
            shutil.rmtree(p)
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'meta.json'), 'w') as f:
        json.dump(dict(params=params, complete=False), f, indent=2)


def _finish_output(out: str, params: Dict, **extra) -> None:
    """Mark ``out`` complete: meta.json with ``params`` and ``extra``."""
    with open(osp.join(out, 'meta.json'), 'w') as f:
        json.dump(dict(params=params, complete=True, **extra), f, indent=2)


def _result(out: str, skipped: bool, params: Dict, splits, start: float) -> Dict:
    return dict(
        out=out, skipped=skipped, params=params, splits=splits, seconds=time.perf_counter() - start
    )


def generate_demo_data(
    out: str,
    num_train: int = 64,
    num_val: int = 16,
    seed: int = 0,
    force: bool = False,
    verbose: bool = False,
) -> Dict:
    """Generate the demo dataset under ``out`` (see module docstring).

    Skips the work if ``out/meta.json`` records a complete run with the same
    parameters and version, unless ``force``. A previous output (recognised
    by its meta.json) is removed before regenerating so no stale files stay
    behind; foreign ``coco``/``seg`` folders without meta.json are only
    removed with ``force``.

    Returns a summary dict: ``out``, ``skipped``, ``params``, per-split
    ``splits`` counts and ``seconds``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be >= 1')
    start = time.perf_counter()
    params = dict(
        version=DATA_VERSION, num_train=int(num_train), num_val=int(num_val), seed=int(seed)
    )
    required = [osp.join('coco', 'annotations', f'instances_{s}.json') for s in ('train', 'val')]
    meta = None if force else _up_to_date(out, params, required)
    if meta is not None:
        return _result(out, True, params, meta.get('splits'), start)

    _start_output(out, ['coco', 'seg'], params, force)
    splits = {}
    for split_index, (split, n) in enumerate((('train', num_train), ('val', num_val))):
        splits[split] = _generate_split(out, split, split_index, n, seed)
        if verbose:
            print(
                f'{split}: {splits[split]["images"]} images, {splits[split]["instances"]} instances'
            )
    _finish_output(
        out,
        params,
        splits=splits,
        coco_classes=list(COCO_CLASSES),
        seg_classes=list(SEG_CLASSES),
    )
    return _result(out, False, params, splits, start)


# --------------------------------------------------------------------------
# Classification set (``make demo TASK=cls``)
# --------------------------------------------------------------------------
def render_shape_image(
    rng: np.random.Generator, label: int, size: int = CLS_IMAGE_SIZE
) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 image of one shape of class ``label``
    (0-based into ``CLS_CLASSES``) on the textured background.

    The shape keeps its class's colour of the detection scenes (``COCO_PALETTE``,
    jittered and shaded), so colour and outline both tell the classes apart: a
    set a small network learns in a few CPU minutes (with colours drawn at
    random, DS-Net-T from scratch stayed near chance on 600 images for 11
    epochs). Size and place vary.
    """
    img = _background(rng, size, size)
    lo, hi = CLS_OBJECT_SIZE_RANGE
    extent = float(np.exp(rng.uniform(np.log(lo), np.log(min(hi, size - 4)))))
    pts = _shape_polygon(rng, label, extent)
    ext = pts.max(axis=0)
    mask = _rasterize(pts + rng.uniform([1, 1], [size - 2 - ext[0], size - 2 - ext[1]]), size, size)
    _paint(rng, img, mask, COCO_PALETTE[COCO_CLASSES.index(CLS_CLASSES[label])])
    return _finish(rng, img)


def generate_cls_data(
    out: str,
    train_per_class: int = 100,
    val_per_class: int = 30,
    seed: int = 0,
    force: bool = False,
    verbose: bool = False,
) -> Dict:
    """Generate the classification set under ``out`` in mmpretrain's
    ``CustomDataset`` folder layout::

        meta.json                          parameters + version (idempotency)
        {train,val}/<class>/<class>_NNNN.png  CLS_IMAGE_SIZE-px RGB, one shape each

    with the classes ``CLS_CLASSES`` (folder names; sorted, so class index k is
    ``CLS_CLASSES[k]``) and the same number of images per class. Same
    parameters give byte-identical files; a re-run with them is a no-op unless
    ``force``, and a previous output is replaced, never merged (foreign
    ``train``/``val`` folders without meta.json only with ``force``).

    Returns the summary dict of :func:`generate_demo_data` (``splits``: images
    per split).
    """
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(
            f'train_per_class and val_per_class must be >= 1, got {train_per_class} and '
            f'{val_per_class}'
        )
    start = time.perf_counter()
    params = dict(
        version=CLS_DATA_VERSION,
        train_per_class=int(train_per_class),
        val_per_class=int(val_per_class),
        seed=int(seed),
        image_size=CLS_IMAGE_SIZE,
    )
    required = [osp.join(s, c) for s in ('train', 'val') for c in CLS_CLASSES]
    meta = None if force else _up_to_date(out, params, required)
    if meta is not None:
        return _result(out, True, params, meta.get('splits'), start)

    _start_output(out, ['train', 'val'], params, force)
    splits = {}
    for split_index, (split, n) in enumerate((('train', train_per_class), ('val', val_per_class))):
        for label, name in enumerate(CLS_CLASSES):
            folder = osp.join(out, split, name)
            os.makedirs(folder)
            for idx in range(n):
                # One generator per image, apart from the detection scenes' ([seed, split, idx]).
                rng = np.random.default_rng([seed, split_index, label, idx])
                # The class in the name too: mmpretrain's visualizer names its
                # pictures by file name alone.
                path = osp.join(folder, f'{name}_{idx:04d}.png')
                _write(path, _png_bytes(render_shape_image(rng, label)))
        splits[split] = dict(images=n * len(CLS_CLASSES))
        if verbose:
            print(f'{split}: {splits[split]["images"]} images, {n} per class')
    _finish_output(out, params, splits=splits, classes=list(CLS_CLASSES))
    return _result(out, False, params, splits, start)
