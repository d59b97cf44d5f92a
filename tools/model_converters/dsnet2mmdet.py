"""Convert a public DS-Net checkpoint to mmdsnet's backbone layout (or, with
--classifier, to an mmpretrain ImageClassifier checkpoint).

    python tools/model_converters/dsnet2mmdet.py SRC DST [--classifier]

SRC: a timm-style ``.pth`` (SteveTsui/DS-Net: bare, or under ``model`` /
``model_ema`` / ``state_dict``) or a PaddleClas ``.pdparams``. DST is a plain
state dict that ``DSNet(init_cfg=dict(type='Pretrained', checkpoint=DST))``
loads for mmdet and mmseg alike. The backbone also converts on the fly, so
this step is optional; it saves reading the original file at every run.

With ``--classifier`` DST keeps what detection drops, the final norm and the
head (``backbone.*``, ``head.fc.*``): the whole ImageNet classifier, for the
``configs/dsnet-*_8xb128_in1k.py`` configs (``tools/test.py CONFIG DST``,
``load_from``, mmpretrain's inferencers). A file without a head is refused.
"""

import argparse
import os
import os.path as osp

from mmengine.logging import MMLogger

from mmdsnet.checkpoint import convert_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='public DS-Net checkpoint (.pth or .pdparams)')
    parser.add_argument('dst', help='output path (.pth)')
    parser.add_argument(
        '--classifier',
        action='store_true',
        help='keep the final norm and the head: an mmpretrain ImageClassifier '
        'checkpoint (default: the backbone only, for detection and segmentation)',
    )
    args = parser.parse_args(argv)
    if osp.dirname(args.dst):
        os.makedirs(osp.dirname(args.dst), exist_ok=True)
    logger = MMLogger.get_instance('dsnet2mmdet', log_level='INFO')
    try:
        converted = convert_file(args.src, args.dst, logger=logger, classifier=args.classifier)
    except Exception as err:  # every refusal ends the run with its reason, no traceback
        raise SystemExit(f'dsnet2mmdet: nothing written: {type(err).__name__}: {err}') from err
    params = sum(
        v.numel()
        for k, v in converted.items()
        if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))
    )
    what = 'mmpretrain ImageClassifier' if args.classifier else 'backbone'
    logger.info(f'saved {len(converted)} tensors ({params:,} parameters, {what}) to {args.dst}')


if __name__ == '__main__':
    main()
