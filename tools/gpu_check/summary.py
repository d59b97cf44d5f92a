"""summary.md of a `make gpu-check` run, from the files its steps wrote.

Each section reads one result file and says "not run" when it is missing, so
a run whose later steps failed or timed out still gets a summary of what was
measured. The rows are the cases the result files hold; ratios are against the
peers that settings.TARGETS names, measured in the same run. Standard library
only (gpu_check.py runs before anything is installed).
"""

import glob
import json
import os.path as osp
from typing import List, Optional

from settings import STEPS, TARGETS

# How a figure compares with its peer's to meet a target.
HIGHER_IS_BETTER = {'images_per_s'}
FIGURE_NAMES = {'images_per_s': 'images/s', 'median_s': 'time', 'peak_memory_mb': 'memory'}


def _load(out, name):
    path = osp.join(out, name)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _results(out, name):
    data = _load(out, f'results/{name}')
    return None if data is None else data['results']


def _table(header: List[str], rows: List[list]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]


def _section(title: str, lines: Optional[List[str]]) -> List[str]:
    """A titled section; 'not run' without lines."""
    lines = list(lines or ['not run'])
    while lines and not lines[-1]:
        lines.pop()
    return [title, '', *lines, '']


def _fmt(value, digits=0):
    return 'n/a' if value is None else f'{value:.{digits}f}'


def _ratio(a, b):
    return a / b if a is not None and b else None


def _peers(result_file):
    """The peers the targets on ``result_file`` name: the ratio columns of its tables."""
    return list(dict.fromkeys(t[3] for t in TARGETS if t[0] == result_file))


def _groups(results):
    """Each group of a result file with its cases by name, in the file's order."""
    groups = {}
    for r in results:
        groups.setdefault(r['group'], {})[r['name']] = r
    return groups


def machine_section(out) -> List[str]:
    env = _load(out, 'env.json')
    if env is None:
        return _section('## Machine', None)
    ops = env.get('mmcv_ops')
    ops = f'CUDA {ops["cuda"]}, {ops["compiler"]}' if isinstance(ops, dict) else ops
    gpu = f'{env["gpu"]} (sm_{env["capability"].replace(".", "")})' if 'gpu' in env else 'none'
    stack = ('mmengine', 'mmcv', 'mmdet', 'mmseg')
    rows = [
        ['GPU', gpu],
        ['driver', env.get('driver', 'n/a')],
        ['torch', f'{env.get("torch")} (CUDA {env.get("torch_cuda")})'],
        ['cuDNN / NCCL', f'{env.get("cudnn", "n/a")} / {env.get("nccl", "n/a")}'],
        ['Python / numpy', f'{env.get("python")} / {env.get("numpy")}'],
        [' / '.join(stack), ' / '.join(str(env.get(k)) for k in stack)],
        ['mmcv ops', ops],
    ]
    return _section('## Machine', _table(['', ''], rows))


def steps_section(out, total) -> List[str]:
    rows = []
    for step in _load(out, 'steps.json') or []:
        notes = [step.get('note', '')]
        if 'tests' in step:
            t = step['tests']
            notes.insert(0, f'{t["passed"]} passed, {t["failed"]} failed, {t["skipped"]} skipped')
        if step.get('mmcv'):
            notes.append(f'mmcv: {osp.basename(str(step["mmcv"]))}')
        error = step.get('error')
        if error and error not in step.get('note', ''):  # the first failed command's last line
            notes.append(f'command {step["failed_command"] + 1} failed: {error}')
        note = step.get('target') or '; '.join(n for n in notes if n)
        rows.append([step['step'], step['status'], _fmt(step['seconds']), note.replace('|', '/')])
    header = ['step', 'status', 'seconds', 'note']
    return _section(f'## Steps (total {total:.0f} s)', _table(header, rows))


def tests_section(out) -> List[str]:
    steps = {s['step']: s for s in _load(out, 'steps.json') or []}
    tests = steps.get('tests', {}).get('tests')
    rows = [[c['name'], c['outcome'], _fmt(c['seconds'], 1), c['reason'][:90]]
            for c in (tests or {}).get('cases', [])]  # fmt: skip
    return _section('## GPU tests', tests and _table(['test', 'outcome', 's', 'reason'], rows))


def attention_section(out) -> List[str]:
    data = _load(out, 'results/attention_backends.json')
    title = '## SDPA backend of the DS-Block attentions'
    if data is None:
        return _section(title, None)
    rows = []
    for r in data['results']:
        eligible = {b for row in r['rows'] for b, ok in row['eligible'].items() if ok}
        rows.append(
            [f"DS-Net-{r['arch'][0].upper()}", r['setting'], r['precision'],
             ', '.join(f'{k} {v}' for k, v in sorted(r['chosen'].items())),
             ', '.join(sorted(eligible - {'math'})), r['chosen'].get('math', 0)]
        )  # fmt: skip
    on_math = sum(row[-1] for row in rows)
    header = ['model', 'input', 'precision', 'chosen (calls)', 'fused backends accepted', 'math']
    return _section(title, [
        f'Calls on the math backend (materialises the attention map): {on_math}.', '',
        *_table(header, rows),
    ])  # fmt: skip


# The phases of a detector training iteration in the benchmark's report: (key, header).
PHASES = (('forward_loss_ms', 'fwd + loss ms'), ('backward_ms', 'bwd ms'),
          ('optimizer_step_ms', 'step ms'))  # fmt: skip


def ratio_table(cases: dict, peers: List[str], label: str, value) -> List[str]:
    """One row per case: ``value(case)`` under ``label``, peak memory, the phase times where
    the report has them, and time and memory over each peer's (those of ``peers`` among
    ``cases``)."""
    peers = [cases[p] for p in peers if p in cases]
    phases = [(k, h) for k, h in PHASES if any(k in r for r in cases.values())]
    rows = [
        [r['name'], _fmt(value(r), 1), _fmt(r['peak_memory_mb'])]
        + [_fmt(r.get(k), 1) for k, _ in phases]
        + [f'{_fmt(_ratio(r["median_s"], p["median_s"]), 2)} / '
           f'{_fmt(_ratio(r["peak_memory_mb"], p["peak_memory_mb"]), 2)}' for p in peers]
        for r in cases.values()
    ]  # fmt: skip
    header = (['model', label, 'peak MB'] + [h for _, h in phases]
              + [f'x {p["name"]} (time / memory)' for p in peers])  # fmt: skip
    return _table(header, rows)


def backbone_section(out) -> List[str]:
    results = _results(out, 'benchmark_backbones.json')
    if results is None:
        return _section('## Backbones', None)
    peers, lines = _peers('benchmark_backbones.json'), []
    groups = _groups(results)
    throughput = {g: cases for g, cases in groups.items() if g.startswith('throughput')}
    if throughput:
        names = list(dict.fromkeys(n for cases in throughput.values() for n in cases))
        peers = [p for p in peers if p in names]
        rows = []
        for name in names:
            row = [name]
            for cases in throughput.values():
                rate = cases.get(name, {}).get('images_per_s')
                ratios = [_ratio(rate, cases[p].get('images_per_s')) for p in peers if p in cases]
                ratios = ', '.join(f'{_fmt(x, 2)}x' for x in ratios)
                row.append(f'{_fmt(rate)} ({ratios})' if ratios else _fmt(rate))
            rows.append(row)
        setting = ' '.join(next(iter(throughput)).split()[1:3])
        precisions = [g.split()[-1] for g in throughput]
        against = f' (x {", ".join(peers)})' if peers else ''
        lines += [f'Inference images/s at {setting}{against}:', '',
                  *_table(['backbone', *precisions], rows), '']  # fmt: skip
    for group, cases in groups.items():
        if group.startswith('backbone'):
            table = ratio_table(cases, peers, 'ms', lambda r: r['median_s'] * 1e3)
            lines += [f'Forward + backward, {group.replace("backbone ", "")}:', '', *table, '']
    return _section('## Backbones', lines)


def detector_section(out) -> List[str]:
    """The tables of every detector result file (benchmark_detectors*.json), each against the
    peers of the main one."""
    pattern = osp.join(out, 'results', 'benchmark_detectors*.json')
    groups, peers = {}, _peers('benchmark_detectors.json')
    for name in sorted(osp.basename(p) for p in glob.glob(pattern)):
        for group, cases in _groups(_results(out, name)).items():
            label = group if name == 'benchmark_detectors.json' else f'{group}, {name}'
            groups[label] = (cases, peers)
    if not groups:
        return _section('## Mask R-CNN', None)
    lines = []
    for group, (cases, peers) in groups.items():
        if ' train ' in group:
            label, value = 'ms / iteration', lambda r: r['median_s'] * 1e3
        else:
            label, value = 'ms / image', lambda r: _ratio(1e3, r.get('images_per_s'))
        lines += [f'{group} ({label}):', '', *ratio_table(cases, peers, label, value), '']
    return _section('## Mask R-CNN', lines)


def profile_section(out) -> List[str]:
    lines = []
    for path in sorted(glob.glob(osp.join(out, 'profile_*.txt'))):
        with open(path) as f:
            text = f.read().split('\n\n')[0]
        lines += [f'`{osp.basename(path)}`:', '', '```', text, '```', '']
    return _section('## Profiles: one DS-Net-S Mask R-CNN training iteration; DS-Net inference',
                    lines)  # fmt: skip


def demo_section(out) -> List[str]:
    """A row for each demo step that ran (settings.STEPS: ``demo``, ``demo_bf16``)."""
    title = '## Demo (tools/demo/demo.sh: tools/dist_train.sh, then tools/test.py)'
    steps = [step for step in STEPS if step.startswith('demo')]
    demos = [(step, _load(out, f'results/{step}.json')) for step in steps]
    if all(demo is None for _, demo in demos):
        return _section(title, None)
    header = ['step', 'processes', 'AMP', 'train s', 'total s', 'bbox mAP', 'AP50', 'segm mAP',
              'grad-stride warnings', 'status']  # fmt: skip
    rows = [[step, demo.get('processes', 'n/a'), demo.get('amp') or 'no',
             _fmt(demo.get('train_seconds')), _fmt(demo.get('total_seconds')),
             _fmt(demo.get('bbox_mAP'), 3), _fmt(demo.get('bbox_mAP_50'), 3),
             _fmt(demo.get('segm_mAP'), 3), demo.get('grad_stride_warnings', 'n/a'),
             demo.get('status')]
            for step, demo in demos if demo is not None]  # fmt: skip
    return _section(title, _table(header, rows))


def split_section(out) -> List[str]:
    """Each attention that attn_split='auto' rewrites in training, timed plain and rewritten,
    with the thread blocks each way launches."""
    title = "## attn_split 'never' against 'auto' per DS-Block attention (attention_kernels.py)"
    data = _load(out, 'results/attention_kernels.json')
    if data is None:
        return _section(title, None)
    timed = [r for r in data['rows'] if 'refused' not in r]
    same = ('stage', 'attention', 'kernel', 'precision')
    rows = []
    for auto in (r for r in timed if r['split'] == 'auto' and (r['folds'], r['splits']) != (1, 1)):
        plain = [r for r in timed if r['split'] == 'never' and all(r[k] == auto[k] for k in same)]
        if plain:
            plain = plain[0]
            rows.append(
                [auto['stage'], auto['attention'], f"{auto['len_q']}x{auto['len_k']}",
                 auto['kernel'], auto['precision'], f"{auto['folds']} / {auto['splits']}",
                 f"{plain['forward_blocks']} / {auto['forward_blocks']}",
                 f"{plain['backward_blocks']} / {auto['backward_blocks']}",
                 f"{_fmt(plain['forward_ms'], 2)} / {_fmt(auto['forward_ms'], 2)}",
                 f"{_fmt(plain['backward_ms'], 2)} / {_fmt(auto['backward_ms'], 2)}",
                 _fmt(_ratio(auto['forward_ms'] + auto['backward_ms'],
                             plain['forward_ms'] + plain['backward_ms']), 2)]
            )  # fmt: skip
    if not rows:
        return _section(title, ['no attention was rewritten'])
    header = ['stage', 'attention', 'Lq x Lk', 'kernel', 'precision', 'q folds / k splits',
              'fwd blocks', 'bwd blocks', 'fwd ms (never / auto)', 'bwd ms (never / auto)',
              'x fwd+bwd']  # fmt: skip
    return _section(title, [
        f'{data["arch"]} at {data["shape"][0]}x{data["shape"][1]}, {data["rows"][0]["batch"]} '
        f'images per call; the rule for {data["sms_for_rule"]} SMs.', '',
        *_table(header, rows),
    ])  # fmt: skip


def targets_section(out, cpu=False) -> List[str]:
    """The targets of settings.TARGETS and the math-backend one, each met or missed."""
    lines = ['CPU mode: tiny inputs, so these verdicts say nothing about a GPU.', ''] if cpu else []
    for result_file, where, case, peer, figure, bound in TARGETS:
        for group, cases in _groups(_results(out, result_file) or []).items():
            if where not in group or case not in cases or peer not in cases:
                continue
            ratio = _ratio(cases[case].get(figure), cases[peer].get(figure))
            if ratio is None:
                continue
            higher = figure in HIGHER_IS_BETTER
            met = ratio >= bound if higher else ratio <= bound
            lines.append(
                f'- {group}: {case} {FIGURE_NAMES[figure]} {ratio:.2f}x {peer} '
                f'(needs {">=" if higher else "<="} {bound}), {"met" if met else "missed"}'
            )
    attention = _load(out, 'results/attention_backends.json')
    if attention is not None:
        math = sum(r['chosen'].get('math', 0) for r in attention['results'])
        lines.append(f'- No DS-Block attention on the math backend: {math} calls, '
                     f'{"met" if math == 0 else "missed"}')  # fmt: skip
    if not any(line.startswith('- ') for line in lines):
        lines.append('not measured')
    return _section('## Targets', lines)


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
        split_section(out),
        tests_section(out),
        demo_section(out),
        profile_section(out),
    ):
        lines += section
    text = '\n'.join(lines)
    with open(osp.join(out, 'summary.md'), 'w') as f:
        f.write(text)
    return text
