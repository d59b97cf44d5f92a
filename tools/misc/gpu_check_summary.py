"""summary.md of a `make gpu-check` run, from the files its steps wrote.

Each section reads one result file and says "not run" when it is missing, so
a run whose later steps failed or timed out still gets a summary of what was
measured. Ratios are against the peers measured in the same run. Standard
library only (tools/misc/gpu_check.py runs before anything is installed).
"""

import glob
import json
import os.path as osp
from typing import List, Optional

SWIN, R50 = 'Swin-T', 'ResNet-50'
DET_DSNET, DET_SWIN, DET_R50 = (
    'MaskRCNN DS-Net-S+FPN',
    'MaskRCNN Swin-T+FPN',
    'MaskRCNN R-50+FPN',
)


def _load(out, name):
    path = osp.join(out, name)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _table(header: List[str], rows: List[list]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return lines


def _fmt(value, digits=0):
    if value is None:
        return 'n/a'
    return f'{value:.{digits}f}'


def _ratio(a, b):
    return a / b if a is not None and b else None


def machine_section(out) -> List[str]:
    env = _load(out, 'env.json')
    if env is None:
        return ['## Machine', '', 'not run', '']
    ops = env.get('mmcv_ops')
    ops = f'CUDA {ops["cuda"]}, {ops["compiler"]}' if isinstance(ops, dict) else ops
    rows = [
        [
            'GPU',
            f'{env["gpu"]} (sm_{env["capability"].replace(".", "")})' if 'gpu' in env else 'none',
        ],
        ['driver', env.get('driver', 'n/a')],
        ['torch', f'{env.get("torch")} (CUDA {env.get("torch_cuda")})'],
        ['cuDNN / NCCL', f'{env.get("cudnn", "n/a")} / {env.get("nccl", "n/a")}'],
        ['Python / numpy', f'{env.get("python")} / {env.get("numpy")}'],
        [
            'mmengine / mmcv / mmdet / mmseg',
            ' / '.join(str(env.get(k)) for k in ('mmengine', 'mmcv', 'mmdet', 'mmseg')),
        ],
        ['mmcv ops', ops],
    ]
    return ['## Machine', '', *_table(['', ''], rows), '']


def steps_section(out, total) -> List[str]:
    steps = _load(out, 'steps.json') or []
    rows = []
    for step in steps:
        note = step.get('note', '')
        if 'tests' in step:
            t = step['tests']
            counts = f'{t["passed"]} passed, {t["failed"]} failed, {t["skipped"]} skipped'
            note = f'{counts}; {note}' if note else counts
        if step['step'] == 'install' and step.get('mmcv'):
            note = (note + '; ' if note else '') + f'mmcv: {osp.basename(str(step["mmcv"]))}'
        if step['step'] == 'demo' and step.get('target'):
            note = step['target']
        rows.append([step['step'], step['status'], _fmt(step['seconds']), note])
    return [
        f'## Steps (total {total:.0f} s)',
        '',
        *_table(['step', 'status', 'seconds', 'note'], rows),
        '',
    ]


def tests_section(out) -> List[str]:
    steps = {s['step']: s for s in _load(out, 'steps.json') or []}
    tests = steps.get('tests', {}).get('tests')
    if not tests:
        return ['## GPU tests', '', 'not run', '']
    rows = [
        [c['name'], c['outcome'], _fmt(c['seconds'], 1), c['reason'][:90]] for c in tests['cases']
    ]
    return ['## GPU tests', '', *_table(['test', 'outcome', 's', 'reason'], rows), '']


def attention_section(out) -> List[str]:
    data = _load(out, 'results/attention_backends.json')
    if data is None:
        return ['## SDPA backend of the DS-Block attentions', '', 'not run', '']
    rows, on_math = [], 0
    for r in data['results']:
        math = r['chosen'].get('math', 0)
        on_math += math
        chosen = ', '.join(f'{k} {v}' for k, v in sorted(r['chosen'].items()))
        eligible = sorted(
            {b for row in r['rows'] for b, ok in row['eligible'].items() if ok and b != 'math'}
        )
        rows.append(
            [f"DS-Net-{r['arch'][0].upper()}", r['setting'], r['precision'], chosen,
             ', '.join(eligible), math]
        )  # fmt: skip
    return [
        '## SDPA backend of the DS-Block attentions',
        '',
        f'Calls on the math backend (materialises the attention map): {on_math}.',
        '',
        *_table(
            ['model', 'input', 'precision', 'chosen (calls)', 'fused backends accepted', 'math'],
            rows,
        ),
        '',
    ]


def _results(out, name):
    data = _load(out, f'results/{name}')
    return None if data is None else data['results']


def _pick(results, group_prefix, name):
    for r in results or []:
        if r['group'].startswith(group_prefix) and r['name'] == name:
            return r
    return None


def backbone_section(out) -> List[str]:
    results = _results(out, 'benchmark_backbones.json')
    if results is None:
        return ['## Backbones', '', 'not run', '']
    names = list(dict.fromkeys(r['name'] for r in results))
    lines = ['## Backbones', '']
    throughput = [r for r in results if r['group'].startswith('throughput')]
    if throughput:
        setting = throughput[0]['group'].split()[1:3]
        precisions = list(dict.fromkeys(r['group'].split()[-1] for r in throughput))
        rows = []
        for name in names:
            row = [name]
            for precision in precisions:
                r = _pick(throughput, f'throughput {" ".join(setting)} {precision}', name)
                swin = _pick(throughput, f'throughput {" ".join(setting)} {precision}', SWIN)
                rate = r and r.get('images_per_s')
                ratio = _ratio(rate, swin and swin.get('images_per_s'))
                row.append(f'{_fmt(rate)} ({_fmt(ratio, 2)}x)' if ratio else _fmt(rate))
            rows.append(row)
        lines += [
            f'Inference images/s at {" ".join(setting)} (x {SWIN}):',
            '',
            *_table(['backbone', *precisions], rows),
            '',
        ]
    train = [r for r in results if r['group'].startswith('backbone')]
    if train:
        group = train[0]['group']
        swin = _pick(train, group, SWIN)
        rows = [
            [
                r['name'],
                _fmt(r['median_s'] * 1e3, 1),
                _fmt(_ratio(r['median_s'], swin and swin['median_s']), 2),
                _fmt(r['peak_memory_mb']),
                _fmt(_ratio(r['peak_memory_mb'], swin and swin['peak_memory_mb']), 2),
            ]
            for r in train
        ]
        lines += [
            f'Forward + backward, {group.replace("backbone ", "")} (x {SWIN}):',
            '',
            *_table(['backbone', 'ms', 'x time', 'peak MB', 'x memory'], rows),
            '',
        ]
    return lines


def detector_section(out) -> List[str]:
    results = _results(out, 'benchmark_detectors.json')
    if results is None:
        return ['## Mask R-CNN', '', 'not run', '']
    groups = list(dict.fromkeys(r['group'] for r in results))
    lines = ['## Mask R-CNN', '']
    for group in groups:
        members = [r for r in results if r['group'] == group]
        swin = _pick(members, group, DET_SWIN)
        r50 = _pick(members, group, DET_R50)
        train = ' train ' in group
        rows = []
        for r in members:
            per_image = r['median_s'] * 1e3 / 2
            rows.append(
                [
                    r['name'].replace('MaskRCNN ', ''),
                    _fmt(r['median_s'] * 1e3, 1) if train else _fmt(per_image, 1),
                    _fmt(_ratio(r['median_s'], swin and swin['median_s']), 2),
                    _fmt(_ratio(r['median_s'], r50 and r50['median_s']), 2),
                    _fmt(r['peak_memory_mb']),
                    _fmt(_ratio(r['peak_memory_mb'], swin and swin['peak_memory_mb']), 2),
                ]
            )
        unit = 'ms / iteration' if train else 'ms / image'
        lines += [
            f'{group} ({unit}):',
            '',
            *_table(['model', unit, 'x Swin-T', 'x R-50', 'peak MB', 'x Swin-T memory'], rows),
            '',
        ]
    return lines


def profile_section(out) -> List[str]:
    lines = ['## Profiles: one DS-Net-S Mask R-CNN training iteration; DS-Net inference', '']
    found = False
    detector = ['profile_dsnet-s_maskrcnn_fp32.txt', 'profile_dsnet-s_maskrcnn_amp.txt']
    inference = glob.glob(osp.join(out, 'profile_dsnet-*_inference_*.txt'))
    for name in detector + sorted(osp.basename(p) for p in inference):
        path = osp.join(out, name)
        if not osp.isfile(path):
            continue
        found = True
        with open(path) as f:
            text = f.read().split('\n\n')[0]
        lines += [f'`{name}`:', '', '```', text, '```', '']
    return lines if found else lines + ['not run', '']


def demo_section(out) -> List[str]:
    demo = _load(out, 'results/demo.json')
    if demo is None:
        return ['## Demo (NCCL, AMP)', '', 'not run', '']
    rows = [
        [
            demo.get('processes', 'n/a'),
            'yes' if demo.get('amp') else 'no',
            _fmt(demo.get('train_seconds')),
            _fmt(demo.get('test_seconds')),
            _fmt(demo.get('bbox_mAP'), 3),
            _fmt(demo.get('bbox_mAP_50'), 3),
            _fmt(demo.get('segm_mAP'), 3),
            demo.get('grad_stride_warnings', 'n/a'),
            demo.get('status'),
        ]
    ]
    header = ['processes', 'AMP', 'train s', 'test s', 'bbox mAP', 'AP50', 'segm mAP',
              'grad-stride warnings', 'status']  # fmt: skip
    return [
        '## Demo (tools/dist_train.sh, then tools/test.py)',
        '',
        *_table(header, rows),
        '',
    ]


def folding_section(out) -> List[str]:
    """Each attention that DS-Net folds in training, timed unfolded and folded."""
    title = '## Query folding of the DS-Block attentions (attention_kernels.py)'
    data = _load(out, 'results/attention_kernels.json')
    if data is None:
        return [title, '', 'not run', '']
    timed = [r for r in data['rows'] if 'refused' not in r]
    rows = []
    for folded in (r for r in timed if r['folds'] > 1):
        same = ('stage', 'attention', 'kernel', 'precision')
        plain = next(
            (r for r in timed if r['folds'] == 1 and all(r[k] == folded[k] for k in same)), None
        )
        if plain is None:
            continue
        rows.append(
            [folded['stage'], folded['attention'], f"{folded['len_q']}x{folded['len_k']}",
             folded['kernel'], folded['precision'], folded['folds'],
             f"{_fmt(plain['forward_ms'], 2)} / {_fmt(folded['forward_ms'], 2)}",
             f"{_fmt(plain['backward_ms'], 2)} / {_fmt(folded['backward_ms'], 2)}",
             _fmt(_ratio(folded['backward_ms'], plain['backward_ms']), 2)]
        )  # fmt: skip
    if not rows:
        return [title, '', 'no attention was folded', '']
    header = ['stage', 'attention', 'Lq x Lk', 'kernel', 'precision', 'folds',
              'fwd ms (plain / folded)', 'bwd ms (plain / folded)', 'x backward']  # fmt: skip
    batch = data['rows'][0]['batch']
    return [
        title,
        '',
        f'{data["arch"]} at {data["shape"][0]}x{data["shape"][1]}, {batch} images per call; '
        f'folds for {data["sms_for_folding"]} SMs.',
        '',
        *_table(header, rows),
        '',
    ]


def targets_section(out, cpu=False) -> List[str]:
    """The GPU targets, each met or missed with its figure."""
    lines = ['## Targets', '']
    if cpu:
        lines += ['CPU mode: tiny inputs, so these verdicts say nothing about a GPU.', '']
    backbones = _results(out, 'benchmark_backbones.json') or []
    for r in backbones:
        if r['group'].startswith('throughput') and r['name'] == 'DS-Net-S':
            swin = _pick(backbones, r['group'], SWIN)
            ratio = _ratio(r.get('images_per_s'), swin and swin.get('images_per_s'))
            if ratio is not None:
                verdict = 'met' if ratio >= 1.0 else 'missed'
                lines.append(
                    f"- DS-Net-S images/s >= Swin-T's ({r['group']}): {ratio:.2f}x, {verdict}"
                )
    detectors = _results(out, 'benchmark_detectors.json') or []
    for r in detectors:
        if ' train ' not in r['group'] or r['name'] != DET_DSNET:
            continue
        swin = _pick(detectors, r['group'], DET_SWIN)
        r50 = _pick(detectors, r['group'], DET_R50)
        t_swin = _ratio(r['median_s'], swin and swin['median_s'])
        m_swin = _ratio(r['peak_memory_mb'], swin and swin['peak_memory_mb'])
        t_r50 = _ratio(r['median_s'], r50 and r50['median_s'])
        parts = []
        if t_swin is not None:
            parts.append(f'time {t_swin:.2f}x Swin-T ({"met" if t_swin <= 1.0 else "missed"})')
        if m_swin is not None:
            parts.append(f'memory {m_swin:.2f}x Swin-T ({"met" if m_swin <= 1.0 else "missed"})')
        if t_r50 is not None:
            parts.append(f'time {t_r50:.2f}x R-50 ({"met" if t_r50 <= 1.3 else "missed"})')
        if parts:
            lines.append(f'- {r["group"]}, DS-Net-S + FPN: ' + '; '.join(parts))
    attention = _load(out, 'results/attention_backends.json')
    if attention is not None:
        math = sum(r['chosen'].get('math', 0) for r in attention['results'])
        lines.append(
            f'- No DS-Block attention on the math backend: {math} calls, '
            f'{"met" if math == 0 else "missed"}'
        )
    if not any(line.startswith('- ') for line in lines):
        lines.append('not measured')
    return lines + ['']


def write_summary(out: str, total_seconds: float, cpu: bool, title: Optional[str] = None) -> str:
    """Write ``out/summary.md``; returns its text."""
    mode = 'CPU mode (tiny settings, not GPU figures)' if cpu else 'GPU'
    lines = [
        title or f'# make gpu-check: {mode}',
        '',
        'Medians of interleaved trials; ratios against peers measured in the same run.',
        '',
    ]
    for section in (
        machine_section(out),
        steps_section(out, total_seconds),
        targets_section(out, cpu),
        backbone_section(out),
        detector_section(out),
        attention_section(out),
        folding_section(out),
        tests_section(out),
        demo_section(out),
        profile_section(out),
    ):
        lines += section
    text = '\n'.join(lines)
    with open(osp.join(out, 'summary.md'), 'w') as f:
        f.write(text)
    return text
