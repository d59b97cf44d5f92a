"""Draw DS-Net's attention for one image: co-attention, global self-attention
and where the Inter-scale Alignment changes the features.

    python tools/analysis_tools/visualize_attention.py CONFIG CHECKPOINT IMAGE \
        --out-dir DIR [--stage 3] [--block -1] [--points X,Y ...] [--size 640]

CONFIG is a detector or segmentor config whose ``model.backbone`` is a DSNet,
or a config whose ``model`` is a DSNet. CHECKPOINT is a training checkpoint of
that config (its ``backbone.`` weights are used), a DS-Net checkpoint in any
layout ``tools/model_converters/dsnet2mmdet.py`` reads, or ``none`` for random
weights. Writes three PNGs to DIR:

* ``local_to_global.png``: for each query point, the pixel's attention over
  the global tokens, drawn over the image;
* ``global_tokens.png``: for the global token whose cell holds each point,
  the pixels it gathers from (global-to-local) and its self-attention over
  the global grid;
* ``alignment_ratio.png``: per stage, ||feature after alignment - before|| /
  ||before|| for the local pixels and the global tokens of one block.

Attention maps are averaged over heads unless ``--head`` picks one.
"""

import argparse
import os
import os.path as osp

import matplotlib
import mmcv
import numpy as np
import torch
from matplotlib.patches import Rectangle
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm

# importing mmdsnet registers the models
from mmdsnet.analysis.attention_maps import TargetNames, attention_targets, record_attention_targets
from mmdsnet.analysis.inputs import image_file, output_dir
from mmdsnet.checkpoint import is_url
from mmdsnet.models import DSNet
from mmdsnet.models.backbones.pretrained import load_pretrained_dsnet
from mmdsnet.utils.config import resolve_config_path

# mmdet/mmseg's ImageNet normalisation, for configs without a data_preprocessor.
DEFAULT_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
DEFAULT_LONG_SIDE = 512


def type_name(cfg) -> str:
    kind = cfg.get('type', '') if hasattr(cfg, 'get') else ''
    kind = getattr(kind, '__name__', kind)
    return str(kind).rpartition('.')[2]


def dsnet_config(cfg, config_name: str) -> dict:
    """The DSNet part of a config: ``model`` itself or ``model.backbone``."""
    model = cfg.get('model')
    if model is None:
        raise SystemExit(f'{config_name}: the config has no `model`')
    if type_name(model) == 'DSNet':
        backbone = model
    elif type_name(model.get('backbone', {})) == 'DSNet':
        backbone = model.backbone
    else:
        found = type_name(model.get('backbone', model)) or 'no type'
        raise SystemExit(
            f'{config_name}: its backbone is {found}, not DSNet; this tool '
            "draws DS-Net's co-attention, so the config's model or "
            'model.backbone must be a DSNet'
        )
    return {k: v for k, v in backbone.items() if k != 'type'}


def test_resize(cfg):
    """(scale, keep_ratio) of the first Resize of the config's test pipeline, if any."""
    pipelines = [cfg.get('test_pipeline')]
    loader = cfg.get('test_dataloader') or {}
    pipelines.append(loader.get('dataset', {}).get('pipeline'))
    for pipeline in pipelines:
        for step in pipeline or []:
            if type_name(step) == 'Resize' and step.get('scale'):
                return tuple(step['scale']), step.get('keep_ratio', False)
    return None


def build_backbone(cfg, config_name: str, checkpoint: str) -> DSNet:
    """The config's DSNet in eval mode with ``checkpoint``'s weights (or random ones)."""
    kwargs = dsnet_config(cfg, config_name)
    kwargs['init_cfg'] = None  # weights come from CHECKPOINT, not the config
    model = DSNet(**kwargs)
    model.init_weights()
    if checkpoint.lower() != 'none':
        # lexists: a directory, FIFO or device is named as such by the loader.
        if not is_url(checkpoint) and not osp.lexists(checkpoint):
            raise SystemExit(
                f'checkpoint not found: {checkpoint} (give a checkpoint file, or '
                "'none' for random weights)"
            )
        try:
            load_pretrained_dsnet(model, checkpoint, logger=MMLogger.get_current_instance())
        except (OSError, RuntimeError, ValueError, TypeError) as error:
            raise SystemExit(
                f'{checkpoint} does not load into the DSNet of {config_name}: {error}'
            ) from None
    return revert_sync_batchnorm(model).eval()


def prepare_image(cfg, path: str, size):
    """(original RGB image, network input (1, 3, h, w)) with the config's resize and
    normalisation (``model.data_preprocessor``)."""
    if not osp.isfile(path):
        raise SystemExit(f'image not found: {path}')
    image = mmcv.imread(path, channel_order='rgb')
    norm = dict(DEFAULT_NORM)
    norm.update({k: v for k, v in (cfg.model.get('data_preprocessor') or {}).items() if k in norm})
    if size:
        resized = mmcv.imrescale(image, size / max(image.shape[:2]))
    else:
        resize = test_resize(cfg)
        if resize is None:
            resized = mmcv.imrescale(image, DEFAULT_LONG_SIDE / max(image.shape[:2]))
        elif resize[1]:
            resized = mmcv.imrescale(image, resize[0])
        else:
            resized = mmcv.imresize(image, resize[0])
    net = resized if norm['bgr_to_rgb'] else resized[..., ::-1]
    net = (net.astype(np.float32) - np.array(norm['mean'], np.float32)) / np.array(
        norm['std'], np.float32
    )
    return image, torch.from_numpy(np.ascontiguousarray(net.transpose(2, 0, 1)))[None]


def parse_points(texts, width: int, height: int):
    """Query points 'x,y' in image pixels; default: the centre and two diagonal points."""
    if not texts:
        return [(width / 2, height / 2), (width / 4, height / 4), (3 * width / 4, 3 * height / 4)]
    points = []
    for text in texts:
        try:
            x, y = (float(v) for v in text.split(','))
        except ValueError:
            raise SystemExit(
                f'--points takes x,y pairs in image pixels (e.g. 120,80), got {text!r}'
            ) from None
        if not (0 <= x < width and 0 <= y < height):
            raise SystemExit(f'point {text} lies outside the {width}x{height} (W x H) image')
        points.append((x, y))
    return points


def head_mean(maps: torch.Tensor, head) -> np.ndarray:
    """(heads, ...) -> (...): one head or the mean over heads."""
    return (maps.mean(0) if head is None else maps[head]).cpu().numpy()


class AttentionFigures:
    """Draws one image's ``BackboneAttention`` with matplotlib."""

    def __init__(self, image: np.ndarray, result, head=None, cmap='inferno', dpi=80):
        # pyplot only after the file backend is chosen (no display needed)
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        self.plt = plt
        self.image, self.result, self.head, self.cmap, self.dpi = image, result, head, cmap, dpi
        height, width = image.shape[:2]
        in_h, in_w = result.input_size
        self.scale = (width / in_w, height / in_h)  # input pixel -> image pixel
        pad_h, pad_w = result.padded_size
        # Maps cover the padded input; the axis limits crop them to the image.
        self.extent = (0, pad_w * self.scale[0], pad_h * self.scale[1], 0)
        self.head_label = 'mean over heads' if head is None else f'head {head + 1}'

    def _to_input(self, point):
        return point[0] / self.scale[0], point[1] / self.scale[1]

    def _panel(self, ax, data, title, alpha=0.6, interpolation='bilinear'):
        """``data`` (a map over the padded input) drawn over the image, cropped to it."""
        height, width = self.image.shape[:2]
        ax.imshow(self.image, extent=(0, width, height, 0))
        shown = ax.imshow(
            data, extent=self.extent, cmap=self.cmap, interpolation=interpolation, alpha=alpha
        )
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_title(title, fontsize=9)
        ax.axis('off')
        self.plt.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)

    def _mark_token(self, ax, index):
        x0, y0, w, h = self.result.token_cell(index)
        ax.add_patch(
            Rectangle(
                (x0 * self.scale[0], y0 * self.scale[1]),
                w * self.scale[0],
                h * self.scale[1],
                fill=False,
                edgecolor='cyan',
                linewidth=1.5,
            )
        )

    def _subplots(self, rows, cols):
        height, width = self.image.shape[:2]
        panel_w = 3.6
        panel_h = max(1.5, panel_w * height / width)
        return self.plt.subplots(
            rows, cols, figsize=(panel_w * cols + 0.6, panel_h * rows + 0.6), squeeze=False
        )

    def _save(self, fig, path):
        fig.tight_layout()
        fig.savefig(path, dpi=self.dpi)
        self.plt.close(fig)
        return path

    def _where(self):
        r = self.result
        return f'stage {r.stage + 1} block {r.block + 1}'

    def local_to_global(self, points, path):
        maps = self.result.maps
        fig, axes = self._subplots(1, len(points))
        for ax, point in zip(axes[0], points):
            pixel = self.result.pixel_index(*self._to_input(point))
            grid = head_mean(maps.local_to_global[0, :, pixel], self.head)
            self._panel(
                ax,
                grid.reshape(maps.grid_size),
                f'pixel ({point[0]:.0f}, {point[1]:.0f}) -> global tokens',
            )
            ax.plot(*point, marker='o', markersize=6, color='cyan', markeredgecolor='black')
        fig.suptitle(
            f'Local-to-global co-attention, {self._where()} ({self.head_label})', fontsize=10
        )
        return self._save(fig, path)

    def global_tokens(self, points, path):
        maps = self.result.maps
        fig, axes = self._subplots(len(points), 2)
        for row, point in zip(axes, points):
            token = self.result.token_index(*self._to_input(point))
            gathered = head_mean(maps.global_to_local[0, :, token], self.head)
            self._panel(
                row[0],
                gathered.reshape(maps.map_size),
                f'token {token} <- pixels (global-to-local)',
            )
            self_attn = head_mean(maps.global_self[0, :, token], self.head)
            self._panel(
                row[1],
                self_attn.reshape(maps.grid_size),
                f'token {token} -> tokens (global self-attention)',
                interpolation='nearest',
            )
            for ax in row:
                self._mark_token(ax, token)
        fig.suptitle(
            f'Global tokens holding the query points, {self._where()} '
            f'({self.head_label}); cyan box: the token',
            fontsize=10,
        )
        return self._save(fig, path)

    def alignment_ratio(self, path):
        stages = sorted(self.result.stage_ratios)
        fig, axes = self._subplots(2, len(stages))
        for col, stage in enumerate(stages):
            block, ratios = self.result.stage_ratios[stage]
            where = f'stage {stage + 1} block {block + 1}'
            self._panel(
                axes[0][col],
                ratios.local_ratio[0].cpu().numpy(),
                f'{where}: local',
                alpha=0.75,
                interpolation='nearest',
            )
            self._panel(
                axes[1][col],
                ratios.global_ratio[0].cpu().numpy(),
                f'{where}: global',
                alpha=0.75,
                interpolation='nearest',
            )
        fig.suptitle(
            'How much the alignment changes each feature: ||after - before|| / ||before||',
            fontsize=10,
        )
        return self._save(fig, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Draw a DS-Net backbone's co-attention, global self-attention and "
        'alignment strength for one image (PNG files).'
    )
    parser.add_argument(
        'config',
        help='detector/segmentor config with a DSNet backbone, '
        'or a config whose model is a DSNet (also pkg::rel/path.py)',
    )
    parser.add_argument(
        'checkpoint',
        help='training checkpoint of CONFIG, a DS-Net '
        "checkpoint (public or converted), or 'none' for random weights",
    )
    parser.add_argument('image', type=image_file, help='image file')
    parser.add_argument(
        '--out-dir', type=output_dir, required=True, help='where the PNGs are written'
    )
    parser.add_argument(
        '--stage',
        type=int,
        default=3,
        help='stage of the maps, 1-4 (stride 4, 8, 16, 32); default 3',
    )
    parser.add_argument(
        '--block',
        type=int,
        default=-1,
        help='block in the stage, from 1; negative counts from the end '
        '(default -1: the last block)',
    )
    parser.add_argument(
        '--ratio-block',
        default='last',
        help="block whose alignment ratio is drawn in every stage: 'last' "
        '(default) or a number from 1',
    )
    parser.add_argument(
        '--points',
        nargs='+',
        metavar='X,Y',
        help='query pixels in image coordinates (default: the centre, '
        'and the points at 1/4 and 3/4 of the diagonal)',
    )
    parser.add_argument(
        '--head', type=int, help='draw one head (from 1) instead of the mean over heads'
    )
    parser.add_argument(
        '--size',
        type=int,
        help='resize so that the longer side has this '
        "many pixels (default: the config's test-pipeline Resize, else "
        f'{DEFAULT_LONG_SIDE}); stage-1 maps grow with the square of it',
    )
    parser.add_argument('--dpi', type=int, default=80, help='resolution of the PNGs (default 80)')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries, key=value'
    )
    return parser.parse_args(argv)


def check_choice(model: DSNet, args):
    """The CLI's choice of blocks (numbers from 1) as ``AttentionTargets``
    (indices from 0), checked by ``attention_targets`` like the Python API's."""

    names = TargetNames(
        stage='--stage', block='--block', ratio_blocks='--ratio-block', first=1, takes_none=False
    )
    ratio = args.ratio_block
    if ratio != 'last':
        try:
            ratio = int(ratio)
        except ValueError:
            pass  # attention_targets names what is accepted
    try:
        targets = attention_targets(model, args.stage, args.block, ratio, names=names)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    heads = model.num_heads[targets.stage]
    if args.head is not None and not 1 <= args.head <= heads:
        raise SystemExit(
            f'stage {args.stage} has {heads} heads: --head must be in 1..{heads}, got {args.head}'
        )
    return targets


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = Config.fromfile(resolve_config_path(args.config))
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_backbone(cfg, args.config, args.checkpoint)
    if not model.with_alignment:
        raise SystemExit(
            f'{args.config}: this DSNet has with_alignment=False, so its '
            'blocks have no co-attention to draw'
        )
    targets = check_choice(model, args)
    image, inputs = prepare_image(cfg, args.image, args.size)
    if min(inputs.shape[2:]) < DSNet.min_input_size:
        raise SystemExit(
            f'the resized image is {tuple(inputs.shape[2:])} (H, W); DSNet needs '
            f'both sides >= {DSNet.min_input_size}: raise --size'
        )
    points = parse_points(args.points, image.shape[1], image.shape[0])
    model.to(args.device)
    with torch.no_grad():
        result = record_attention_targets(model, inputs.to(args.device), targets)
    head = None if args.head is None else args.head - 1
    figures = AttentionFigures(image, result, head=head, dpi=args.dpi)
    os.makedirs(args.out_dir, exist_ok=True)
    written = [
        figures.local_to_global(points, osp.join(args.out_dir, 'local_to_global.png')),
        figures.global_tokens(points, osp.join(args.out_dir, 'global_tokens.png')),
        figures.alignment_ratio(osp.join(args.out_dir, 'alignment_ratio.png')),
    ]
    maps = result.maps
    print(
        f'input {result.input_size[1]}x{result.input_size[0]} (W x H, padded to '
        f'{result.padded_size[1]}x{result.padded_size[0]}); stage {result.stage + 1} block '
        f'{result.block + 1}: local map {maps.map_size[1]}x{maps.map_size[0]}, global grid '
        f'{maps.grid_size[1]}x{maps.grid_size[0]}'
    )
    for path in written:
        print(f'wrote {path}')
    return written


if __name__ == '__main__':
    main()
