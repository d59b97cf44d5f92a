"""Which SDPA backend every DS-Block attention of DS-Net runs on, per dtype.

    python tools/analysis_tools/attention_backends.py [--archs tiny,small,base]
        [--settings '224 b1,800x1344 b1'] [--precisions fp32,fp16,bf16]
        [--out work_dirs/attention_backends.json]

For each architecture, input and precision (bf16/fp16 as autocast) the
backbone runs once; every ``scaled_dot_product_attention`` call is recorded
with its shapes, the backend PyTorch picks and the backends that would accept
it alone (``mmdsnet.analysis.attention_backends``). Prints one line per stage
and attention (all blocks of a stage share their shapes) and the count of calls
per chosen backend; exits with 1 if any call lands on the math backend, which
materialises the attention map.
"""

import argparse
import json
import os
import os.path as osp
from collections import Counter

import torch

from mmdsnet.analysis.attention_backends import ATTENTIONS, describe_sdpa_calls
from mmdsnet.analysis.inputs import PRECISIONS, output_file, parse_setting, split_choices
from mmdsnet.models import DSNet


def describe(arch, setting, precision, device):
    """The recorded calls of one run, and one row per (stage, attention). Every call as plain
    SDPA runs it (``attn_split='never'``): with 'auto' a split call runs the same fused kernel
    through aten's private ops, which SDPA's selector does not see."""
    batch, height, width = parse_setting(setting)
    model = DSNet(arch, drop_path_rate=0.0, attn_split='never').to(device)
    model.eval()
    x = torch.randn(batch, 3, height, width, device=device)
    calls = describe_sdpa_calls(model, x, PRECISIONS[precision])
    rows = {}
    for call in calls:
        stage = int(call['module'].split('.')[1]) + 1
        key = (stage, ATTENTIONS[call['index_in_module']])
        row = rows.setdefault(key, dict(call, stage=stage, attention=key[1], blocks=0))
        row['blocks'] += 1
        if call['backend'] != row['backend']:
            row['backend'] = 'mixed'
    return calls, list(rows.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--archs', default=','.join(DSNet.arch_settings))
    parser.add_argument('--settings', default='224 b1,800x1344 b1')
    parser.add_argument('--precisions', default='fp32,fp16,bf16')
    parser.add_argument('--out', type=output_file, default='work_dirs/attention_backends.json')
    args = parser.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        archs = split_choices(args.archs, 'archs', [*DSNet.arch_settings, *DSNet.arch_aliases])
        precisions = split_choices(args.precisions, 'precisions', PRECISIONS)
    except ValueError as error:
        parser.error(str(error))
    report, on_math = [], 0
    for arch in archs:
        for setting in args.settings.split(','):
            for precision in precisions:
                calls, rows = describe(arch, setting, precision, device)
                counts = Counter(c['backend'] for c in calls)
                on_math += counts.get('math', 0)
                print(
                    f'\nDS-Net-{arch[0].upper()} {setting} {precision} on {device.type}: '
                    f'{len(calls)} calls, chosen {dict(counts)}'
                )
                print('| stage | attention | Lq | Lk | heads x d | chosen | eligible |')
                print('|---|---|---|---|---|---|---|')
                for row in rows:
                    eligible = ', '.join(b for b, ok in row['eligible'].items() if ok)
                    print(
                        f'| {row["stage"]} | {row["attention"]} | {row["query_len"]} | '
                        f'{row["key_len"]} | {row["heads"]} x {row["head_dims"]} | '
                        f'{row["backend"]} | {eligible} |'
                    )
                report.append(
                    dict(
                        arch=arch,
                        setting=setting,
                        precision=precision,
                        device=device.type,
                        chosen=dict(counts),
                        rows=rows,
                    )
                )
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(torch=torch.__version__, results=report), f, indent=1)
    print(f'\nwrote {args.out}; calls on the math backend: {on_math}')
    return 1 if on_math else 0


if __name__ == '__main__':
    raise SystemExit(main())
