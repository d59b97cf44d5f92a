"""tools/analysis_tools: FLOPs counting of configs and the benchmark's report."""

import json
import os.path as osp

import pytest
import torch
from helpers import REPO_ROOT, load_tool


@pytest.mark.parametrize(
    'config,paper_gflops',
    [('mask_rcnn_dsnet_t_fpn_1x_coco.py', 1.8), ('retinanet_dsnet_s_fpn_1x_coco.py', 3.5)],
)
def test_get_flops_backbone_matches_paper_at_224(config, paper_gflops, capsys):
    result = load_tool('tools/analysis_tools/get_flops.py').main(
        [osp.join(REPO_ROOT, 'configs', config), '--shape', '224']
    )
    assert abs(result['backbone_flops'] / 1e9 - paper_gflops) / paper_gflops < 0.03
    # The implementation runs the global conv halves on the small grid.
    assert result['backbone_flops_executed'] < result['backbone_flops']
    assert (
        result['model_flops'] - result['model_flops_executed']
        == result['backbone_flops'] - result['backbone_flops_executed']
    )
    # The whole detector includes the backbone, the neck and the heads.
    assert result['model_flops'] > 1.5 * result['backbone_flops']
    assert result['model_params'] > result['backbone_params']
    assert 'GFLOPs' in capsys.readouterr().out


def test_get_flops_segmentor_default_shape():
    result = load_tool('tools/analysis_tools/get_flops.py').main(
        [osp.join(REPO_ROOT, 'configs', 'fpn_dsnet-t_4xb8-40k_ade20k-512x512.py')]
    )
    assert (result['height'], result['width']) == (512, 512)
    assert result['model_flops'] > result['backbone_flops'] > 0


@pytest.mark.integration
def test_benchmark_reports_every_entry(tmp_path, drop_runner_globals):
    # drop_runner_globals: the benchmark's builders make mmdet the current scope, as the tool
    # does in its own process
    out = tmp_path / 'bench.json'
    report = load_tool('tools/analysis_tools/benchmark.py').main(
        [
            '--suites',
            'backbone',
            '--backbones',
            # one backbone: each entry's memory is measured in a fresh process (~6 s); DS-Net-T
            # and ResNet-50 run through the tool in the launch-count test and make gpu-check
            'DS-Net-S unfused',
            '--settings',
            '96 b2',
            '--trials',
            '2',
            '--warmup',
            '0',
            '--out',
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    names = [(r['group'], r['name']) for r in saved['results']]
    assert names == [('backbone 96 b2 eval', 'DS-Net-S unfused'),
                     ('backbone 96 b2 train', 'DS-Net-S unfused')]  # fmt: skip
    for entry in saved['results']:
        assert len(entry['times_s']) == 2 and entry['median_s'] > 0
        assert entry['peak_memory_mb'] >= 0
        if entry['group'].endswith('train'):
            assert entry['saved_activations_mb'] > 0
        else:
            assert entry['saved_activations_mb'] is None


def test_benchmark_refuses_an_empty_selection(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('the throughput suite runs on a GPU')
    with pytest.raises(SystemExit):
        load_tool('tools/analysis_tools/benchmark.py').main(
            ['--suites', 'throughput', '--out', str(tmp_path / 'b.json')]
        )
    assert 'throughput on a CPU needs --throughput-setting' in capsys.readouterr().err
    assert not (tmp_path / 'b.json').exists()


def test_saved_activation_count_releases_the_graph():
    """Counting must not keep the forward's activations alive afterwards."""
    import weakref

    from mmdsnet.analysis import saved_activations_mb

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    seen = []
    model[1].register_forward_hook(lambda mod, args, out: seen.append(weakref.ref(out)))
    kept = saved_activations_mb(model, torch.randn(1024, 64))
    assert kept >= 1024 * 256 * 4 / 2**20  # the ReLU output is saved for its backward
    assert seen and seen[0]() is None, 'the saved ReLU output outlived the count'


def test_profile_backbone_attributes_time_to_attention_and_convolution(capsys):
    from mmdsnet.analysis.profiling import FAMILIES

    shares = load_tool('tools/analysis_tools/profile_backbone.py').main(
        ['--arch', 'tiny', '--shape', '64', '96', '--mode', 'train', '--top', '3']
    )
    # Every DS-Block runs three attentions and several convolutions, forward and back.
    assert shares['attention (SDPA)'] > 0 and shares['convolution'] > 0
    assert set(shares) <= set(FAMILIES) | {'other'}
    assert 'self time by family' in capsys.readouterr().out


def test_profile_backbone_under_autocast_writes_its_table(tmp_path):
    out = tmp_path / 'profile.txt'
    shares = load_tool('tools/analysis_tools/profile_backbone.py').main(
        ['--arch', 'tiny', '--shape', '64', '64', '--batch', '2', '--precision', 'bf16',
         '--top', '3', '--out', str(out)]
    )  # fmt: skip
    text = out.read_text()
    assert text.startswith('DS-Net-T eval at 2x64x64, bf16, on cpu')
    assert 'wall time (median of 3, unprofiled)' in text and 'Self CPU' in text
    assert shares['convolution'] > 0


def test_attention_kernels_shapes_follow_the_architecture():
    from mmdsnet.analysis import attention_shapes

    tool = load_tool('tools/analysis_tools/attention_kernels.py')
    shapes = attention_shapes('small', 800, 1344)
    # Stage 1: 200x336 local tokens against the 25x42 global grid, one head of 32;
    # stage 4 shrinks its 25x42 map by 2 again, to 12x21.
    assert (0, 'local q, global kv', 1, 67200, 1050, 32) in shapes
    assert (3, 'global q, local kv', 8, 252, 1050, 32) in shapes
    # Sizes that are not multiples of 32 are padded up, as the backbone does.
    assert (0, 'local q, global kv', 1, 28 * 35, 3 * 4, 32) in attention_shapes('tiny', 112, 137)
    rows = tool.main(
        ['--arch', 'tiny', '--shape', '64', '64', '--kernels', 'flash', 'math', '--trials', '1']
    )
    assert len(rows) == 4 * 3 * 2
    assert all(r['forward_ms'] > 0 and r['backward_gflops_per_s'] > 0 for r in rows)


def test_attention_kernels_times_never_against_auto_and_reports_refusals(tmp_path):
    tool = load_tool('tools/analysis_tools/attention_kernels.py')
    out = tmp_path / 'kernels.json'
    argv = ['--arch', 'tiny', '--shape', '256', '320', '--kernels', 'flash', 'efficient',
            '--batch', '2', '--splits', 'never', 'auto', '--trials', '1',
            '--out', str(out)]  # fmt: skip
    rows = tool.main(argv)
    # stage 1: 5,120 local queries over 80 global keys, 2 images: 4 backward
    # blocks for 132 SMs, so 'auto' folds the queries 80 times (320 blocks); the
    # other direction splits its keys as often (forward 4 -> 320 blocks)
    auto = {(r['stage'], r['attention']): r for r in rows if r['split'] == 'auto'}
    local_q, global_q = auto[1, 'local q, global kv'], auto[1, 'global q, local kv']
    assert (local_q['folds'], local_q['splits'], local_q['backward_blocks']) == (80, 1, 320)
    assert (global_q['folds'], global_q['splits'], global_q['forward_blocks']) == (1, 80, 320)
    timed = [r for r in rows if r['kernel'] == 'flash']
    assert len(timed) == 2 * 12 and all(r['backward_ms'] > 0 for r in timed)
    # the CPU has no memory-efficient kernel: every such call is refused, not fatal
    assert all('refused' in r for r in rows if r['kernel'] == 'efficient')
    saved = json.loads(out.read_text())
    assert saved['rows'] == rows and saved['sms_for_rule'] == 132


def test_configs_resolve_by_package_prefix(tmp_path):
    from mmdsnet.utils import load_config_file, resolve_config_path

    cfg = load_config_file('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
    assert cfg.model.backbone.type == 'ResNet' and cfg.model.backbone.depth == 50
    with pytest.raises(FileNotFoundError, match='no mask_rcnn/nope.py under'):
        resolve_config_path('mmdet::mask_rcnn/nope.py')
    with pytest.raises(FileNotFoundError, match="package 'nosuchpkg' is not installed"):
        resolve_config_path('nosuchpkg::a.py')
    with pytest.raises(FileNotFoundError, match='config file not found'):
        resolve_config_path(str(tmp_path / 'missing.py'))


def test_benchmark_builds_every_detector():
    from mmdsnet.analysis.benchmark import DETECTORS
    from mmdsnet.analysis.inputs import build_detector

    for name, (config, options) in DETECTORS.items():
        model = build_detector(config, options, config_dir=osp.join(REPO_ROOT, 'configs'))
        depth = getattr(model.backbone, 'depth', None)
        assert (depth == 50) == name.startswith('MaskRCNN R-50'), name
        assert getattr(model.backbone, 'with_cp', False) == ('with_cp' in name), name
        if depth is None:  # DS-Net: trains every stage unless the entry says otherwise
            assert model.backbone.frozen_stages == (1 if 'frozen_stages=1' in name else -1), name
    with pytest.raises(SystemExit):
        load_tool('tools/analysis_tools/benchmark.py').main(
            ['--suites', 'detector', '--detectors', 'MaskRCNN R-101']
        )


def test_benchmark_modes_select_detector_groups():
    from mmdsnet.analysis.benchmark import make_cases

    cases = make_cases(
        {'detector'}, torch.device('cpu'), [], [], modes=['eval'], detectors=['MaskRCNN R-50+FPN']
    )
    assert [(c.group, c.name) for c in cases] == [
        ('Mask R-CNN 2x800x1333 eval fp32', 'MaskRCNN R-50+FPN')
    ]
    # training in each precision asked for; inference in fp32 only, as tools/test.py runs it
    cases = make_cases(
        {'detector'},
        torch.device('cpu'),
        [],
        [],
        modes=['train', 'eval'],
        detectors=['MaskRCNN R-50+FPN'],
        det_precisions=['fp32', 'amp'],
        det_size='64x96',
    )
    assert [c.group for c in cases] == [
        'Mask R-CNN 2x64x96 train fp32',
        'Mask R-CNN 2x64x96 train amp',
        'Mask R-CNN 2x64x96 eval fp32',
    ]


def test_benchmark_table_shows_the_columns_its_first_entry_has():
    """Saved activations and images/s are columns only where the group's first
    entry measures them; a missing memory figure reads nan, not a crash."""
    from mmdsnet.analysis.benchmark import Case, format_group

    def case(name, times, batch=None, memory=None, saved=None):
        made = Case('g', name, '64 b1', build=None, step=None, batch=batch)
        made.times, made.memory_mb, made.saved_mb = times, memory, saved
        return made

    lines = format_group('g', [case('a', [0.1, 0.3, 0.2], memory=10.0, saved=4.0),
                               case('b', [0.4], memory=5.0, saved=1.0)]).splitlines()  # fmt: skip
    assert lines[1:] == [
        'g (ratios to a)',
        '| model                          | median ms | x time | peak MB | x mem | saved MB | x saved |',  # noqa: E501
        '|--------------------------------|-----------|--------|---------|-------|----------|---------|',
        '| a                              |     200.0 |   1.00 |      10 |  1.00 |        4 |    1.00 |',  # noqa: E501
        '| b                              |     400.0 |   2.00 |       5 |  0.50 |        1 |    0.25 |',  # noqa: E501
    ]  # fmt: skip
    rated = format_group('g', [case('a', [0.5], batch=2), case('b', [0.25], batch=2)])
    assert rated.splitlines()[2].endswith('| x mem | img/s |')
    assert rated.splitlines()[-1].endswith('|     nan |   nan |     8 |')


def test_benchmark_selection_names_what_is_accepted():
    from mmdsnet.analysis.benchmark import select_cases

    choices = dict(suites='backbone', backbones='DS-Net-T', settings='64 b1', modes='eval',
                   detectors='', precisions='fp32', det_precisions='fp32',
                   det_size='64x96')  # fmt: skip
    cpu = torch.device('cpu')
    assert [c.name for c in select_cases(cpu, **choices)] == ['DS-Net-T']
    for wrong, message in [
        (dict(backbones='DS-Net-X'), r"unknown backbones \['DS-Net-X'\]; choose from \['DS-Net-S'"),
        (dict(modes=''), r"unknown modes \[\]; choose from \['eval', 'train'\]"),
        (
            dict(det_precisions='bf16'),
            r"detector precisions \['bf16'\]; choose from \['fp32', 'amp'",
        ),
        (dict(settings='64'), "input setting '64' is not 'HxW bN'"),
        (dict(det_size='64'), "--det-size '64' is not 'HxW'"),
    ]:
        with pytest.raises(ValueError, match=message):
            select_cases(cpu, **{**choices, **wrong})


def test_attention_kernels_plan_prints_the_rule_without_timing():
    tool = load_tool('tools/analysis_tools/attention_kernels.py')
    argv = ['--arch', 'small', '--shape', '800', '1344', '--batch', '2', '--kernels', 'flash',
            '--precisions', 'fp32', 'fp16', '--splits', 'never', 'auto', '--plan']  # fmt: skip
    rows = tool.main(argv)
    assert len(rows) == 12 * 2 * 2 and not any('forward_ms' in r for r in rows)
    stage_1 = {
        (r['attention'], r['precision']): r
        for r in rows
        if r['stage'] == 1 and r['split'] == 'auto'
    }
    # docs/performance.md, "Attention calls on the GPU": 34 -> 272 blocks in fp32
    fp32 = stage_1['global q, local kv', 'fp32']
    assert (fp32['splits'], fp32['forward_blocks']) == (8, 272)
    fp16 = stage_1['global self', 'fp16']
    assert (fp16['folds'], fp16['splits'], fp16['forward_blocks'], fp16['backward_blocks']) == (
        15,
        10,
        300,
        270,
    )


def test_benchmark_counts_the_launches_of_each_backbone_entry(tmp_path):
    tool = load_tool('tools/analysis_tools/benchmark.py')
    out = tmp_path / 'launches.json'
    tool.main(['--suites', 'backbone', '--backbones', 'DS-Net-T', '--settings',
               '64x64 b1', '--modes', 'train,eval', '--backbone-precisions', 'fp32,bf16',
               '--launches', '--trials', '1', '--warmup', '0', '--no-memory',
               '--out', str(out)])  # fmt: skip
    results = {(r['group'], r['name']): r for r in json.loads(out.read_text())['results']}
    train = results['backbone 64x64 b1 train', 'DS-Net-T']['launches']
    train_bf16 = results['backbone 64x64 b1 train bf16', 'DS-Net-T']['launches']
    assert 0 < results['backbone 64x64 b1 eval', 'DS-Net-T']['launches'] < train < train_bf16
    # no count for a mode the counter does not run (eval under autocast)
    assert 'launches' not in results['backbone 64x64 b1 eval bf16', 'DS-Net-T']


BAD_ARGUMENTS = [
    ('profile_backbone', ['--batch', '0'], "--batch: '0' is not a whole number of at least 1"),
    ('profile_backbone', ['--batch', '-1'], "--batch: '-1' is not a whole number"),
    ('profile_backbone', ['--top', '-3'], "--top: '-3' is not a whole number"),
    (
        'profile_backbone',
        ['--out', 'FILE/x.txt'],
        '--out: FILE/x.txt: FILE is a file, not a folder',
    ),
    ('attention_kernels', ['--shape', '31', '31'], "--shape: '31' is not an image side"),
    ('attention_kernels', ['--out', 'FOLDER'], '--out: FOLDER is a folder; a file name'),
    ('get_flops', ['CONFIG', '--shape', '-64'], "--shape: '-64' is not an image side"),
    ('profile_detector', ['--size', '0x0'], "--size: '0x0' is not an image size 'HxW'"),
    ('benchmark', ['--trials', '0'], "--trials: '0' is not a whole number"),
    ('benchmark', ['--out', 'FILE/b.json'], '--out: FILE/b.json: FILE is a file, not a folder'),
    (
        'visualize_attention',
        ['CONFIG', 'none', 'EMPTY', '--out-dir', 'FOLDER'],
        'image: EMPTY is empty',
    ),
    (
        'visualize_attention',
        ['CONFIG', 'none', 'FILE', '--out-dir', 'FILE'],
        '--out-dir: FILE exists',
    ),
]


@pytest.mark.parametrize('tool, argv, message', BAD_ARGUMENTS)
def test_analysis_tools_refuse_bad_arguments_with_a_usage_error(
    tmp_path, capsys, tool, argv, message
):
    places = {
        'FILE': str(tmp_path / 'file'),
        'FOLDER': str(tmp_path),
        'EMPTY': str(tmp_path / 'empty.png'),
        'CONFIG': osp.join(REPO_ROOT, 'configs', 'mask_rcnn_dsnet_t_fpn_1x_coco.py'),
    }
    (tmp_path / 'file').write_text('not a folder')
    (tmp_path / 'empty.png').write_bytes(b'')

    def fill(text):
        for name, place in places.items():
            text = text.replace(name, place)
        return text

    with pytest.raises(SystemExit) as raised:
        load_tool(f'tools/analysis_tools/{tool}.py').main([fill(a) for a in argv])
    assert raised.value.code == 2
    assert f'error: argument {fill(message)}' in capsys.readouterr().err


def test_attention_kernels_makes_the_folder_of_its_out_file(tmp_path):
    out = tmp_path / 'new' / 'kernels.json'
    load_tool('tools/analysis_tools/attention_kernels.py').main(
        [
            '--arch',
            'tiny',
            '--shape',
            '32',
            '32',
            '--kernels',
            'math',
            '--trials',
            '1',
            '--out',
            str(out),
        ]
    )
    assert json.loads(out.read_text())['shape'] == [32, 32]
