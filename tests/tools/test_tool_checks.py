"""Issue 20, item 11: upstream traps the tools name before or instead of a
confusing failure (empty dataset, unwritable --out, misspelt config keys)."""

import argparse
import json
import os.path as osp
import warnings

import pytest
from helpers import REPO_ROOT, load_tool


def test_misspelt_top_level_key_warns_with_the_known_one(tmp_path):
    from mmdsnet.cli import config_from_args

    config = tmp_path / 'cfg.py'
    config.write_text("load_frm = 'epoch_1.pth'\nmy_setting = 3\nmodel = dict(type='X')\n")
    args = argparse.Namespace(
        config=str(config), launcher='none', cfg_options=None, work_dir=None, local_rank=0
    )
    with pytest.warns(UserWarning) as record:
        config_from_args(args)
    messages = [str(w.message) for w in record if 'config key' in str(w.message)]
    assert messages == [
        "config key 'load_frm' is not one the Runner or mmdet/mmseg read and is ignored; "
        "did you mean 'load_from'?"
    ]


def test_shipped_demo_configs_give_no_key_warning():
    from mmdsnet.cli import config_from_args

    for name in (
        'fpn_dsnet-t_demo-seg.py',
        'mask_rcnn_dsnet_t_dsfpn_demo.py',
        'dsnet-t_demo-cls.py',
    ):
        args = argparse.Namespace(
            config=osp.join(REPO_ROOT, 'configs/demo', name),
            launcher='none',
            cfg_options=None,
            work_dir=None,
            local_rank=0,
        )
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter('always')
            config_from_args(args)
        assert not [w for w in record if 'config key' in str(w.message)], name


def test_test_tool_checks_out_before_the_evaluation(tmp_path, monkeypatch):
    tool = load_tool('tools/test.py')
    built = []
    monkeypatch.setattr(tool, 'build_runner', lambda cfg: built.append(cfg) or 1 / 0)
    config = tmp_path / 'cfg.py'
    config.write_text('work_dir = None\n')
    not_a_dir = tmp_path / 'file.txt'
    not_a_dir.write_text('x')
    out = not_a_dir / 'results.pkl'
    with pytest.raises(SystemExit, match=f'--out {out}: cannot be written'):
        tool.main([str(config), 'ckpt.pth', '--out', str(out), '--work-dir', str(tmp_path / 'w')])
    assert built == []
    # A writable path passes the check and leaves nothing behind.
    ok = tmp_path / 'results.pkl'
    with pytest.raises(ZeroDivisionError):
        tool.main([str(config), 'ckpt.pth', '--out', str(ok), '--work-dir', str(tmp_path / 'w')])
    assert len(built) == 1 and not ok.exists()
    # Missing directories are fine where mmengine can create them (make demo's
    # WORK_DIR/test/results.pkl), not under a file.
    nested = tmp_path / 'new' / 'dirs' / 'results.pkl'
    with pytest.raises(ZeroDivisionError):
        tool.main(
            [str(config), 'ckpt.pth', '--out', str(nested), '--work-dir', str(tmp_path / 'w')]
        )
    assert len(built) == 2 and not (tmp_path / 'new').exists()
    under_a_file = not_a_dir / 'sub' / 'results.pkl'
    with pytest.raises(SystemExit, match=f'{not_a_dir} is not a directory'):
        tool.main(
            [str(config), 'ckpt.pth', '--out', str(under_a_file), '--work-dir', str(tmp_path / 'w')]
        )
    assert len(built) == 2


def test_train_tool_names_an_empty_dataset(tmp_path, monkeypatch):
    from mmengine.dataset import BaseDataset

    ann_file = tmp_path / 'empty.json'
    ann_file.write_text(json.dumps(dict(metainfo={}, data_list=[])))

    class Runner:
        def train(self):
            BaseDataset(ann_file=str(ann_file))  # what the Runner's dataloader build does

    tool = load_tool('tools/train.py')
    monkeypatch.setattr(tool, 'build_runner', lambda cfg: Runner())
    config = tmp_path / 'cfg.py'
    config.write_text('work_dir = None\n')
    with pytest.raises(SystemExit) as raised:
        tool.main([str(config), '--work-dir', str(tmp_path / 'w')])
    message = str(raised.value)
    assert message.startswith('tools/train.py: the dataset BaseDataset has no samples')
    assert f"ann_file='{ann_file}'" in message and 'filter_empty_gt' in message


def test_tools_name_a_training_image_that_cannot_be_read(tmp_path, monkeypatch):
    from mmcv.transforms import LoadImageFromFile

    from mmdsnet.cli import name_unreadable_images

    monkeypatch.setattr(LoadImageFromFile, 'transform', LoadImageFromFile.transform)  # restored
    empty = tmp_path / 'img_0001.jpg'
    empty.write_bytes(b'')
    name_unreadable_images()
    name_unreadable_images()  # once only
    with pytest.raises(RuntimeError, match=f'^image {empty} could not be read .*empty'):
        LoadImageFromFile()(dict(img_path=str(empty)))
    assert LoadImageFromFile(ignore_empty=True)(dict(img_path=str(empty))) is None
