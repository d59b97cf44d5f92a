"""Parameters and FLOPs of a config's backbone and of the whole model, with
attention counted (mmengine's counter skips scaled_dot_product_attention;
``mmdsnet.analysis.count_flops`` registers a handle for it).

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W]

FLOPs are multiply-accumulates (the paper's and mmengine's convention) for one
image of H x W (default 800 x 1280 for detection, 512 x 512 for segmentation).
The whole-model count runs the network in 'tensor' mode: for two-stage
detectors that is RPN plus the RoI heads on the RPN proposals.

The main figures count DS-Blocks as the spec formulates them (the paper's
convention); the "executed" figures count what this implementation runs,
which moves the global halves of conv1/conv2 onto the small global grid.
"""

import argparse
import os.path as osp

import torch
from mmengine.config import DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, DefaultScope, init_default_scope

# importing mmdsnet registers the models
from mmdsnet.analysis import commuted_conv_macs, count_flops, parameter_count
from mmdsnet.analysis.inputs import image_side
from mmdsnet.utils import load_config_file

DEFAULT_SHAPES = {'mmdet': (800, 1280), 'mmseg': (512, 512)}


class TensorForward(torch.nn.Module):
    """Runs ``model._forward`` (the 'tensor' mode) with fixed data samples."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs):
        return self.model._forward(inputs, self.data_samples)


def data_samples_for(scope, height, width):
    shape = (height, width)
    meta = dict(
        img_shape=shape,
        ori_shape=shape,
        pad_shape=shape,
        batch_input_shape=shape,
        scale_factor=(1.0, 1.0),
    )
    # from the framework the config's scope names: the other may not be installed
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample

        return [DetDataSample(metainfo=meta)]
    from mmseg.structures import SegDataSample

    return [SegDataSample(metainfo=meta)]


def analyse(cfg, shape):
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model = revert_sync_batchnorm(model).eval()
    height, width = shape or DEFAULT_SHAPES[scope]
    inputs = torch.randn(1, 3, height, width)
    whole = TensorForward(model, data_samples_for(scope, height, width))
    with torch.no_grad():
        backbone_executed = count_flops(model.backbone, inputs)
        model_executed = count_flops(whole, inputs)
    return dict(
        scope=scope,
        height=height,
        width=width,
        backbone_params=parameter_count(model.backbone),
        backbone_flops=backbone_executed + commuted_conv_macs(model.backbone, inputs),
        backbone_flops_executed=backbone_executed,
        model_params=parameter_count(model),
        model_flops=model_executed + commuted_conv_macs(whole, inputs),
        model_flops_executed=model_executed,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--shape', type=image_side, nargs='+', help='H W (or one size for both)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    cfg = load_config_file(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    shape = None
    if args.shape:
        if len(args.shape) not in (1, 2):
            parser.error('--shape takes H W or a single size')
        shape = (args.shape[0], args.shape[-1])
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmdet')):
        r = analyse(cfg, shape)
    print(
        f'{osp.basename(args.config)} at {r["height"]}x{r["width"]} (H x W), '
        'FLOPs = multiply-accumulates, attention included'
    )
    for part in ('backbone', 'model'):
        print(
            f'  {part + ":":9s} {r[part + "_params"] / 1e6:.2f} M params, '
            f'{r[part + "_flops"] / 1e9:.1f} GFLOPs '
            f'({r[part + "_flops_executed"] / 1e9:.1f} executed)'
        )
    return r


if __name__ == '__main__':
    main()
