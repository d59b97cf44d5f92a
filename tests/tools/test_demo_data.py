"""Tests for the synthetic demo data generator (mmdsnet.demo.synthetic_data).

They check that the files are deterministic, that the COCO masks (polygon
and RLE) agree with their boxes, that mmdet's CocoDataset and mmseg's
BaseSegDataset load what was written, and the classification folders
(layout, determinism, mmpretrain's CustomDataset).
"""

import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from helpers import load_tool
from pycocotools.coco import COCO

from mmdsnet.demo.synthetic_data import (
    CLS_CLASSES,
    CLS_IMAGE_SIZE,
    COCO_CLASSES,
    COCO_PALETTE,
    MIN_VISIBLE_AREA,
    SEG_BORDER,
    SEG_CLASSES,
    SEG_IGNORE_INDEX,
    generate_cls_data,
    generate_demo_data,
    render_shape_image,
)

NUM_TRAIN, NUM_VAL, SEED = 8, 4, 0


def _tree_bytes(root):
    """Map relative path -> file bytes for every file under ``root``."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                files[osp.relpath(path, root)] = f.read()
    return files


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    """One generated dataset shared by the read-only tests."""
    root = str(tmp_path_factory.mktemp('demo'))
    result = generate_demo_data(root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED)
    assert not result['skipped']
    return root


def _ann_file(root, split):
    """Path of the COCO json of ``split``."""
    return osp.join(root, 'coco', 'annotations', f'instances_{split}.json')


def test_layout(demo_root):
    for split, n in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        assert osp.isfile(_ann_file(demo_root, split))
        for sub in (
            osp.join('coco', split),
            osp.join('seg', 'images', split),
            osp.join('seg', 'annotations', split),
        ):
            pngs = [f for f in os.listdir(osp.join(demo_root, sub)) if f.endswith('.png')]
            assert len(pngs) == n, sub


def test_deterministic(demo_root, tmp_path):
    other = str(tmp_path / 'again')
    generate_demo_data(other, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED)
    a, b = _tree_bytes(demo_root), _tree_bytes(other)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key] == b[key], key

    # A different seed really changes the content.
    third = str(tmp_path / 'seed1')
    generate_demo_data(third, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=1)
    c = _tree_bytes(third)
    assert c['coco/train/000000.png'] != a['coco/train/000000.png']


def test_idempotent_and_force(tmp_path):
    root = str(tmp_path / 'demo')
    first = generate_demo_data(root, num_train=3, num_val=2, seed=3)
    assert not first['skipped']
    before = _tree_bytes(root)

    again = generate_demo_data(root, num_train=3, num_val=2, seed=3)
    assert again['skipped']
    forced = generate_demo_data(root, num_train=3, num_val=2, seed=3, force=True)
    assert not forced['skipped']
    assert _tree_bytes(root) == before

    # New parameters regenerate and leave no stale files behind.
    changed = generate_demo_data(root, num_train=2, num_val=2, seed=3)
    assert not changed['skipped']
    assert len(os.listdir(osp.join(root, 'coco', 'train'))) == 2
    assert len(os.listdir(osp.join(root, 'seg', 'annotations', 'train'))) == 2
    with open(osp.join(root, 'meta.json')) as f:
        meta = json.load(f)
    assert meta['complete'] and meta['params']['num_train'] == 2


def test_refuses_foreign_output(tmp_path):
    root = tmp_path / 'foreign'
    (root / 'coco').mkdir(parents=True)
    with pytest.raises(FileExistsError):
        generate_demo_data(str(root), num_train=2, num_val=1)
    assert not generate_demo_data(str(root), num_train=2, num_val=1, force=True)['skipped']


@pytest.mark.parametrize('split,num_images', [('train', NUM_TRAIN), ('val', NUM_VAL)])
def test_coco_annotations(demo_root, split, num_images):
    coco = COCO(_ann_file(demo_root, split))
    assert sorted(coco.getImgIds()) == list(range(1, num_images + 1))
    assert [coco.cats[i]['name'] for i in (1, 2, 3)] == list(COCO_CLASSES)
    ann_ids = sorted(coco.getAnnIds())
    assert ann_ids == list(range(1, len(ann_ids) + 1))

    formats = set()
    empty_images, odd_sizes = 0, 0
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        h, w = info['height'], info['width']
        img = cv2.imread(osp.join(demo_root, 'coco', split, info['file_name']))
        assert img.shape == (h, w, 3)
        odd_sizes += (h % 32 != 0) or (w % 32 != 0)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        empty_images += not anns
        for ann in anns:
            assert ann['iscrowd'] == 0
            assert ann['category_id'] in (1, 2, 3)
            seg = ann['segmentation']
            formats.add('polygon' if isinstance(seg, list) else 'rle')
            if isinstance(seg, dict):
                assert isinstance(seg['counts'], str)
                assert seg['size'] == [h, w]
            mask = coco.annToMask(ann).astype(bool)
            assert mask.shape == (h, w)
            ys, xs = np.nonzero(mask)
            x, y, bw, bh = ann['bbox']
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            mask_box = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert np.allclose(mask_box, ann['bbox'], atol=1), ann['id']
            assert abs(mask.sum() - ann['area']) <= 0.02 * ann['area']
            assert ann['area'] >= MIN_VISIBLE_AREA
        if anns:  # visible masks of one image never overlap
            stacked = np.stack([coco.annToMask(a) for a in anns])
            assert stacked.sum(0).max() == 1

    if split == 'train':
        assert formats == {'polygon', 'rle'}
    assert empty_images >= 1
    assert odd_sizes >= 1


def test_mmdet_coco_dataset(demo_root):
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations

    coco = COCO(_ann_file(demo_root, 'train'))
    dataset = CocoDataset(
        data_root=demo_root,
        ann_file='coco/annotations/instances_train.json',
        data_prefix=dict(img='coco/train/'),
        metainfo=dict(classes=COCO_CLASSES),
        filter_cfg=None,
        pipeline=[
            LoadImageFromFile(),
            LoadAnnotations(with_bbox=True, with_mask=True, poly2mask=True),
        ],
    )
    assert len(dataset) == NUM_TRAIN
    num_instances = 0
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        num_instances += len(info['instances'])
        results = dataset[i]
        h, w = results['img'].shape[:2]
        assert (h, w) == (info['height'], info['width'])
        assert not results['gt_ignore_flags'].any()
        masks = results['gt_masks'].masks
        boxes = results['gt_bboxes'].tensor.numpy()
        assert masks.shape == (len(info['instances']), h, w)
        assert set(results['gt_bboxes_labels'].tolist()) <= {0, 1, 2}
        for mask, box in zip(masks, boxes):
            ys, xs = np.nonzero(mask)
            # mmdet boxes are x1y1x2y2 with x2 = x + w.
            assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1)
    assert num_instances == len(coco.getAnnIds()) > 0


def test_mmseg_dataset(demo_root):
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    for split, n in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        dataset = BaseSegDataset(
            data_root=demo_root,
            data_prefix=dict(
                img_path=f'seg/images/{split}', seg_map_path=f'seg/annotations/{split}'
            ),
            img_suffix='.png',
            seg_map_suffix='.png',
            reduce_zero_label=True,
            metainfo=dict(classes=SEG_CLASSES),
            pipeline=[LoadAnnotations()],
        )
        assert len(dataset) == n
        seen = set()
        for i in range(n):
            info = dataset.get_data_info(i)
            assert osp.basename(info['img_path']) == osp.basename(info['seg_map_path'])
            assert osp.isfile(info['img_path'])
            raw = cv2.imread(info['seg_map_path'], cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint8 and raw.ndim == 2
            assert set(np.unique(raw).tolist()) <= {0, 1, 2, 3, 4}
            b = SEG_BORDER
            assert (raw[:b] == SEG_IGNORE_INDEX).all()
            assert (raw[:, -b:] == SEG_IGNORE_INDEX).all()
            assert (raw[b:-b, b:-b] != SEG_IGNORE_INDEX).all()
            img = cv2.imread(info['img_path'])
            assert img.shape[:2] == raw.shape
            gt = dataset[i]['gt_seg_map']
            assert set(np.unique(gt).tolist()) <= {0, 1, 2, 3, 255}
            assert (gt[raw == 0] == 255).all()
            assert (gt[raw > 0] == raw[raw > 0] - 1).all()
            seen |= set(np.unique(gt).tolist())
        assert {0, 255} <= seen and len(seen - {0, 255}) >= 1


def test_semantic_map_matches_instances(demo_root):
    """Label maps are the instance masks painted with category_id + 1."""
    coco = COCO(_ann_file(demo_root, 'train'))
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        raw = cv2.imread(
            osp.join(demo_root, 'seg', 'annotations', 'train', info['file_name']),
            cv2.IMREAD_UNCHANGED,
        )
        expected = np.ones_like(raw)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            expected[coco.annToMask(ann).astype(bool)] = ann['category_id'] + 1
        b = SEG_BORDER
        assert (raw[b:-b, b:-b] == expected[b:-b, b:-b]).all()


# --------------------------------------------------------------------------
# The classification set (make demo TASK=cls)
# --------------------------------------------------------------------------
TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 2


@pytest.fixture(scope='module')
def cls_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo_cls'))
    result = generate_cls_data(
        root, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=SEED
    )
    assert not result['skipped']
    assert result['splits'] == {
        'train': dict(images=3 * TRAIN_PER_CLASS),
        'val': dict(images=3 * VAL_PER_CLASS),
    }
    return root


def test_cls_layout(cls_root):
    """<root>/{train,val}/<class>/<class>_NNNN.png, 64x64 RGB, the classes sorted."""
    assert sorted(os.listdir(cls_root)) == ['meta.json', 'train', 'val']
    assert list(CLS_CLASSES) == sorted(CLS_CLASSES) and set(CLS_CLASSES) == set(COCO_CLASSES)
    for split, n in (('train', TRAIN_PER_CLASS), ('val', VAL_PER_CLASS)):
        assert sorted(os.listdir(osp.join(cls_root, split))) == list(CLS_CLASSES)
        for name in CLS_CLASSES:
            files = sorted(os.listdir(osp.join(cls_root, split, name)))
            assert files == [f'{name}_{i:04d}.png' for i in range(n)]
            img = cv2.imread(osp.join(cls_root, split, name, files[0]), cv2.IMREAD_UNCHANGED)
            assert img.shape == (CLS_IMAGE_SIZE, CLS_IMAGE_SIZE, 3) and img.dtype == np.uint8


def test_cls_shape_keeps_its_class_colour():
    """One shape per image, painted around its class's colour of the detection scenes."""
    for label, name in enumerate(CLS_CLASSES):
        rng = np.random.default_rng([0, label])
        img = render_shape_image(rng, label).astype(np.float32)
        base = np.array(COCO_PALETTE[COCO_CLASSES.index(name)], np.float32)
        close = np.abs(img - base).max(axis=2) < 60  # jitter 25 + shading 25 + noise
        # A shape of at least 20 px: hundreds of pixels near the class colour.
        assert close.sum() > 150, name


def test_cls_deterministic_idempotent_and_force(cls_root, tmp_path):
    other = str(tmp_path / 'again')
    first = generate_cls_data(
        other, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=SEED
    )
    assert _tree_bytes(other) == _tree_bytes(cls_root) and not first['skipped']
    before = _tree_bytes(other)
    again = generate_cls_data(
        other, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=SEED
    )
    assert again['skipped'] and _tree_bytes(other) == before
    forced = generate_cls_data(
        other, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, seed=SEED, force=True
    )
    assert not forced['skipped'] and _tree_bytes(other) == before
    # Other parameters replace the set, leaving no stale files; another seed changes it.
    generate_cls_data(other, train_per_class=1, val_per_class=1, seed=1)
    after = _tree_bytes(other)
    assert len([k for k in after if k.endswith('.png')]) == 2 * len(CLS_CLASSES)
    assert after['train/circle/circle_0000.png'] != before['train/circle/circle_0000.png']


def test_cls_refuses_foreign_folders_and_bad_counts(tmp_path):
    (tmp_path / 'train').mkdir()
    with pytest.raises(FileExistsError, match='train/'):
        generate_cls_data(str(tmp_path), train_per_class=1, val_per_class=1)
    assert (tmp_path / 'train').is_dir()  # left alone
    with pytest.raises(ValueError, match='train_per_class'):
        generate_cls_data(str(tmp_path / 'x'), train_per_class=0, val_per_class=1)


def test_cls_beside_the_detection_set(tmp_path):
    """tools/demo/make_demo_data.py --task cls writes <out>/cls; the detection set at
    <out> keeps its files and stays up to date."""
    make_demo_data = load_tool('tools/demo/make_demo_data.py')
    out = str(tmp_path)
    make_demo_data.main(['--out', out, '--num-train', '2', '--num-val', '1'])
    coco = _tree_bytes(osp.join(out, 'coco'))
    make_demo_data.main(['--task', 'cls', '--out', out, '--num-train', '1', '--num-val', '1'])
    assert sorted(os.listdir(osp.join(out, 'cls', 'val'))) == list(CLS_CLASSES)
    assert generate_demo_data(out, num_train=2, num_val=1)['skipped']
    assert _tree_bytes(osp.join(out, 'coco')) == coco


def test_mmpretrain_custom_dataset(cls_root):
    pytest.importorskip('mmpretrain', reason='the classification demo needs mmpretrain')
    from mmpretrain.datasets import CustomDataset

    for split, n in (('train', TRAIN_PER_CLASS), ('val', VAL_PER_CLASS)):
        dataset = CustomDataset(data_root=cls_root, data_prefix=split)
        assert tuple(dataset.metainfo['classes']) == CLS_CLASSES
        labels = [dataset.get_data_info(i)['gt_label'] for i in range(len(dataset))]
        assert sorted(labels) == sorted(list(range(len(CLS_CLASSES))) * n)
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            assert osp.basename(osp.dirname(info['img_path'])) == CLS_CLASSES[info['gt_label']]
