"""tools/demo/demo_console.py (what reaches the demo's console) and
tools/demo/demo_summary.py (curves, summary, learning check) on small
hand-made logs; tools/test.py --show-dir per framework; tools/demo/demo.sh cls
without mmpretrain."""

import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, load_tool

PROGRESS = (
    '11/24 13:49:23 - mmengine - INFO - Epoch(train) [1][4/8]  lr: 7.0612e-05  '
    'eta: 0:00:42  loss: 7.4714\n'
)
CONSOLE = [
    '/x/package_utils.py:17: UserWarning: pkg_resources is deprecated as an API.\n',
    '  import pkg_resources\n',
    '11/24 13:48:37 - mmengine - WARNING - No GPU available: using the gloo backend\n',
    '11/24 13:48:37 - mmengine - INFO - \n',
    '------------------------------------------------------------\n',
    'System environment:\n',
    '    sys.platform: linux\n',
    '11/24 13:48:38 - mmengine - INFO - Config:\n',
    'model = dict(\n',
    "    type='MaskRCNN')\n",
    '11/24 13:48:40 - mmengine - INFO - paramwise_options -- neck.norm.bias:weight_decay=0.0\n',
    PROGRESS,
    'loading annotations into memory...\n',
    'Done (t=0.00s)\n',
    ' Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.025\n',
    '11/24 13:50:18 - mmengine - INFO - bbox_mAP_copypaste: 0.025 0.050 0.035 0.000\n',
    'something a library printed\n',
]


def test_console_keeps_progress_and_drops_dumps():
    console = load_tool('tools/demo/demo_console.py').ConsoleFilter()
    shown = list(console.run(CONSOLE))
    assert shown == [CONSOLE[2], PROGRESS, 'something a library printed\n']
    assert console.dropped == {
        'library warnings': 2,
        'environment and metric tables': 4,
        'config': 3,
        'optimizer settings': 1,
        'evaluation tables': 4,
    }
    assert 'config 3' in console.report()


def test_console_never_hides_an_error_inside_a_dump():
    console = load_tool('tools/demo/demo_console.py').ConsoleFilter()
    lines = [
        '11/24 13:48:38 - mmengine - INFO - Config:\n',
        'model = dict(\n',
        'Traceback (most recent call last):\n',
        '  File "train.py", line 3\n',
        'ValueError: bad arch\n',
    ]
    shown = list(console.run(lines))
    assert shown == lines[2:]


def write_run(work_dir, bbox_maps, losses, test_bbox_map, pictures=2):
    """A work dir as tools/demo/demo.sh leaves it, with the given figures."""
    run = work_dir / '20261124_134837'
    (run / 'vis_data').mkdir(parents=True)
    records = [
        dict(
            lr=1e-3,
            loss=loss,
            loss_cls=loss / 2,
            loss_mask=loss / 2,
            epoch=1 + i // 2,
            iter=4 * (i + 1),
            step=4 * (i + 1),
        )
        for i, loss in enumerate(losses)
    ]
    records += [
        {'coco/bbox_mAP': m, 'coco/segm_mAP': m + 0.1, 'step': 5 * (i + 1)}
        for i, m in enumerate(bbox_maps)
    ]
    (run / 'vis_data' / 'scalars.json').write_text('\n'.join(map(json.dumps, records)))
    (run / '20261124_134837.log').write_text('log')
    test = work_dir / 'test' / '20261124_140000'
    test.mkdir(parents=True)
    (test / '20261124_140000.json').write_text(
        json.dumps({'coco/bbox_mAP': test_bbox_map, 'coco/segm_mAP': 0.7, 'step': 0})
    )
    (work_dir / 'epoch_20.pth').write_bytes(b'')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_20.pth'))
    (work_dir / 'demo.py').write_text(
        "default_hooks = dict(visualization=dict(type='DetVisualizationHook', score_thr=0.3))\n"
    )
    predictions = work_dir / 'pictures' / 'predictions'
    predictions.mkdir(parents=True)
    for i in range(pictures):
        (predictions / f'{i:06d}.png').write_bytes(b'')
    return predictions


def run_summary(work_dir, predictions, capsys, task='det'):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('tools/demo/demo_summary.py').main(
            [str(work_dir), '--task', task, '--pred-dir', str(predictions), '--nproc', '2']
        )
    return exit_info.value.code, capsys.readouterr().out


def test_summary_draws_curves_and_passes_a_learning_run(tmp_path, capsys):
    predictions = write_run(
        tmp_path, [0.2, 0.5, 0.6, 0.65], [5.0, 3.0, 2.0, 1.0, 0.8, 0.6, 0.5, 0.4, 0.4, 0.3], 0.65
    )
    code, out = run_summary(tmp_path, predictions, capsys)
    assert code == 0
    curves = tmp_path / 'pictures' / 'training_curves.png'
    assert curves.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'validation coco/bbox_mAP per evaluation: 0.2, 0.5, 0.6, 0.65' in out
    assert f'checkpoint:     {tmp_path}/epoch_20.pth' in out
    assert '2 images' in out and 'scores >= 0.3' in out
    assert out.rstrip().endswith('PASS')
    figures = json.loads((tmp_path / 'demo_summary.json').read_text())
    assert figures['processes'] == 2 and figures['test']['coco/bbox_mAP'] == 0.65
    assert figures['check'] == dict(
        metric='coco/bbox_mAP', value=0.65, threshold=0.3, loss_falls=True, pictures=2, passed=True
    )


@pytest.mark.parametrize(
    'losses,test_map,pictures',
    [
        ([1.0, 2.0], 0.65, 2),  # loss rose
        ([2.0, 1.0], 0.1, 2),  # mAP under the threshold
        ([2.0, 1.0], 0.65, 0),  # nothing drawn
    ],
)
def test_summary_fails_a_run_without_learning_or_pictures(
    tmp_path, capsys, losses, test_map, pictures
):
    predictions = write_run(tmp_path, [0.1], losses, test_map, pictures)
    code, out = run_summary(tmp_path, predictions, capsys)
    assert code == 3 and out.rstrip().endswith('FAIL')  # ran to the end, did not learn
    assert json.loads((tmp_path / 'demo_summary.json').read_text())['check']['passed'] is False


def write_cls_run(work_dir, top1s, losses, test_top1, num_classes=4, pictures=3):
    """A classification demo's work dir (tools/demo/demo.sh cls) with the given figures."""
    predictions = write_run(work_dir, [], losses, 0.0, pictures)
    run = work_dir / '20261124_134837' / 'vis_data' / 'scalars.json'
    records = [json.loads(line) for line in run.read_text().splitlines()]
    records += [{'accuracy/top1': t, 'step': i + 1} for i, t in enumerate(top1s)]
    run.write_text('\n'.join(map(json.dumps, records)))
    (work_dir / 'test' / '20261124_140000' / '20261124_140000.json').write_text(
        json.dumps({'accuracy/top1': test_top1, 'step': 0})
    )
    (work_dir / 'demo.py').write_text(
        f"model = dict(type='ImageClassifier', head=dict(num_classes={num_classes}))\n"
    )
    return predictions


def test_cls_summary_passes_top1_above_chance_by_the_margin(tmp_path, capsys):
    """4 classes: chance 25, the bar 25 + CLS_MARGIN (30) = 55 points of top-1."""
    predictions = write_cls_run(tmp_path, [40.0, 60.0, 80.0], [1.4, 1.0, 0.6, 0.3], 55.0)
    code, out = run_summary(tmp_path, predictions, capsys, task='cls')
    assert code == 0
    assert 'validation accuracy/top1 per evaluation: 40, 60, 80' in out
    assert '(needs >= 55: chance 25.0 + 30 points)' in out
    assert '3 images' in out and 'predicted class' in out
    assert out.rstrip().endswith('PASS')
    check = json.loads((tmp_path / 'demo_summary.json').read_text())['check']
    assert check == dict(
        metric='accuracy/top1', value=55.0, threshold=55.0, loss_falls=True, pictures=3, passed=True
    )
    assert (tmp_path / 'pictures' / 'training_curves.png').is_file()


@pytest.mark.parametrize(
    'losses,test_top1,num_classes,pictures',
    [
        ([1.4, 0.3], 54.9, 4, 3),  # under chance + 30 with 4 classes
        ([1.4, 0.3], 63.0, 3, 3),  # 3 classes: the bar is 63.3
        ([0.3, 1.4], 90.0, 4, 3),  # loss rose
        ([1.4, 0.3], 90.0, 4, 0),  # nothing drawn
    ],
)
def test_cls_summary_fails_below_the_bar(
    tmp_path, capsys, losses, test_top1, num_classes, pictures
):
    predictions = write_cls_run(tmp_path, [50.0], losses, test_top1, num_classes, pictures)
    code, out = run_summary(tmp_path, predictions, capsys, task='cls')
    assert code == 3 and out.rstrip().endswith('FAIL')
    check = json.loads((tmp_path / 'demo_summary.json').read_text())['check']
    assert check['passed'] is False
    assert check['threshold'] == pytest.approx(100 / num_classes + 30)


def test_cls_summary_needs_the_number_of_classes(tmp_path, capsys):
    predictions = write_cls_run(tmp_path, [50.0], [1.4, 0.3], 90.0)
    (tmp_path / 'demo.py').write_text("model = dict(type='ImageClassifier', head=dict())\n")
    with pytest.raises(SystemExit, match='model.head.num_classes'):
        load_tool('tools/demo/demo_summary.py').main(
            [str(tmp_path), '--task', 'cls', '--pred-dir', str(predictions)]
        )


@pytest.mark.parametrize(
    'scope,hook,switch,where',
    [
        ('mmdet', 'DetVisualizationHook', 'draw', 'test_out_dir'),
        ('mmseg', 'SegVisualizationHook', 'draw', None),
        ('mmpretrain', 'VisualizationHook', 'enable', 'out_dir'),
    ],
)
def test_show_dir_turns_on_each_frameworks_hook(tmp_path, scope, hook, switch, where):
    """tools/test.py --show-dir: mmpretrain's hook is switched by `enable` and
    draws into `out_dir` (a `draw` key would reach its visualizer and fail)."""
    from mmengine.config import Config

    test_tool = load_tool('tools/test.py')
    cfg = Config(
        dict(
            default_scope=scope,
            default_hooks=dict(visualization=dict(type=hook)),
            visualizer=dict(type='Visualizer'),
        )
    )
    show_dir = str(tmp_path / 'pictures')
    args = test_tool.parse_args(['c.py', 'c.pth', '--show-dir', show_dir])
    test_tool.enable_visualization(cfg, args)
    vis = cfg.default_hooks.visualization
    assert vis[switch] is True
    assert ('draw' in vis) == (scope != 'mmpretrain')
    if where is None:
        assert cfg.visualizer.save_dir == show_dir
    else:
        assert vis[where] == show_dir and 'save_dir' not in cfg.visualizer


def test_cls_demo_stops_at_once_without_mmpretrain(tmp_path):
    """`make demo TASK=cls` on an environment without mmpretrain: exit 2 before any
    data or work dir, saying how to install it."""
    hidden = tmp_path / 'hide'
    hidden.mkdir()
    (hidden / 'mmpretrain.py').write_text("raise ImportError('no mmpretrain here')\n")
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\nPYTHONPATH={hidden} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    work_dir = tmp_path / 'work'
    result = subprocess.run(
        ['bash', osp.join(REPO_ROOT, 'tools', 'demo', 'demo.sh'), 'cls'],
        env=dict(os.environ, PYTHON=str(python), WORK_DIR=str(work_dir)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert 'mmpretrain is not installed' in result.stderr
    assert 'make install' in result.stderr and 'MMDSNET_CLASSIFICATION=0' in result.stderr
    assert not work_dir.exists()
