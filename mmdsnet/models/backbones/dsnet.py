"""DS-Net backbone (Mao et al., "Dual-stream Network for Visual Recognition",
NeurIPS 2021) for dense prediction.

Four stages at strides 4, 8, 16, 32. Each stage is a non-overlapping strided
conv (4x4 for the stem, 2x2 after) followed by DS-Blocks; the global stream of
every block runs on a fixed grid (1/32 of the input in stages 1-3, 1/64 in
stage 4 with the default ``global_resize``).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, trunc_normal_init
from torch.nn.modules.batchnorm import _BatchNorm

from ...registry import register_model
from ..layers import ATTN_SPLIT_MODES, DSBlock, init_stream_convs, linear_drop_path_rates
from ..utils.validation import (
    check_bool,
    check_choice,
    check_heads,
    check_int_in,
    check_mlp_ratio,
    check_nchw_norm_cfg,
    check_positive_float,
    check_positive_int,
    check_rate,
)
from .pretrained import load_pretrained_dsnet, other_init_cfgs, pretrained_checkpoint_of


@register_model
class DSNet(BaseModule):
    """DS-Net backbone returning one NCHW map per ``out_indices`` entry.

    Args:
        arch (str | dict): 'tiny', 'small' or 'base' (also 't', 's', 'b'), or a
            dict with ``embed_dims``, ``depths``, ``num_heads`` and optionally
            ``mlp_ratio``.
        in_channels (int): Image channels. Defaults to 3.
        global_resize (Sequence[int]): Per-stage factor between the stage map
            and the grid of its global stream. (8, 4, 2, 2), the public
            checkpoints' value, puts stages 1-3 at 1/32 of the image and stage
            4 at 1/64; (8, 4, 2, 1) is the paper's "1/32 everywhere" reading.
        with_alignment (bool): Inter-scale Alignment (co-attention) in every
            block; True matches the public checkpoints (the paper's starred
            rows), False the paper's unstarred rows.
        out_indices (Sequence[int]): Stages to return, each in 0..3. Stages
            after the last index are not built (no unused parameters in DDP).
        final_norm (bool): Normalise the stage-4 output with a ``norm``
            (``norm_cfg`` over its channels), as the public ImageNet
            classifiers do before pooling and their linear head; needs 3 in
            ``out_indices``. Off for detection and segmentation, whose
            checkpoints have no ``norm``; an mmpretrain ``ImageClassifier``
            turns it on (docs/configs.md, "Classification (mmpretrain)").
        frozen_stages (int): -1 freezes nothing, 0 the stem conv, k >= 1 the
            stem and stages 1..k (their patch-embedding convs included); 4
            also freezes ``final_norm``'s ``norm``. Re-applied in ``train()``.
        norm_cfg (dict): Norm of the conv branches (BN in the checkpoints;
            SyncBN through config).
        norm_eval (bool): Keep every BN (``final_norm``'s included) in eval
            mode during training (frozen statistics, as usual with 2 images
            per GPU).
        with_cp (bool): Activation checkpointing in every block
            (``DSBlock(with_cp=True)``, non-reentrant); saves memory at the
            cost of one extra forward.
        drop_rate (float): Dropout in the FFNs.
        attn_drop_rate (float): Dropout on attention maps (0.1 in ImageNet
            pre-training).
        drop_path_rate (float): Stochastic depth, linear over all blocks.
        compile_blocks (bool | dict): Compile every DS-Block with
            ``torch.compile`` (regional compilation: blocks of one width share
            one compiled graph; dynamic shapes, so new image sizes do not
            recompile). A dict gives ``torch.compile``'s arguments (e.g.
            ``dict(backend='aot_eager')``). Off by default: not yet measured
            on a GPU (docs/configs.md).
        attn_split (str): How the attention calls fill a GPU: 'auto' (fold
            queries and split keys where a call would start too few thread
            blocks on CUDA; not yet measured on a GPU), 'never' (plain SDPA),
            'always' (every call, on any device: for tests and benchmarks).
            See docs/configs.md.
        channels_last (bool): Run the stages in channels-last layout, where
            the token views of the attention need no copies and oneDNN convs
            are fastest. Outputs are standard contiguous NCHW either way.
        init_cfg (dict | list[dict], optional): ``dict(type='Pretrained',
            checkpoint=PATH[, prefix=...])``, alone or in a list, loads a DS-Net
            checkpoint in the public (timm or PaddleClas) or in this package's
            layout, converted and checked (see ``pretrained.py``). Other
            entries run through mmengine; without any, linear layers get the
            truncated-normal init of the reference code.
    """

    arch_settings: Dict[str, dict] = {
        'tiny': dict(
            embed_dims=(64, 128, 320, 512),
            depths=(2, 2, 4, 1),
            num_heads=(1, 2, 5, 8),
            mlp_ratio=4.0,
        ),
        'small': dict(
            embed_dims=(64, 128, 320, 512),
            depths=(3, 4, 8, 3),
            num_heads=(1, 2, 5, 8),
            mlp_ratio=4.0,
        ),
        'base': dict(
            embed_dims=(64, 128, 320, 512),
            depths=(3, 4, 28, 3),
            num_heads=(1, 2, 5, 8),
            mlp_ratio=4.0,
        ),
    }
    arch_aliases = {'t': 'tiny', 's': 'small', 'b': 'base'}
    num_stages = 4
    strides = (4, 8, 16, 32)
    min_input_size = 32
    # Inputs are zero-padded at the bottom/right to multiples of this.
    size_divisor = 32

    def __init__(
        self,
        arch: Union[str, dict] = 'small',
        in_channels: int = 3,
        global_resize: Sequence[int] = (8, 4, 2, 2),
        with_alignment: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        final_norm: bool = False,
        frozen_stages: int = -1,
        norm_cfg: Optional[dict] = None,
        norm_eval: bool = False,
        with_cp: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        channels_last: bool = True,
        attn_split: str = 'auto',
        compile_blocks: Union[bool, dict] = False,
        init_cfg: Optional[Union[dict, List[dict]]] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        pretrained_checkpoint_of(init_cfg)  # a bad Pretrained entry fails at build
        settings = self.parse_arch(arch)
        self.embed_dims = tuple(settings['embed_dims'])
        self.depths = tuple(settings['depths'])
        self.num_heads = tuple(settings['num_heads'])
        self.mlp_ratio = float(settings.get('mlp_ratio', 4.0))
        self.out_indices = self._check_out_indices(out_indices)
        check_int_in('DSNet frozen_stages', frozen_stages, -1, self.num_stages)
        if (
            not isinstance(global_resize, (list, tuple))
            or len(global_resize) != self.num_stages
            or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in global_resize)
        ):
            raise ValueError(
                f'global_resize must be 4 positive ints (one per stage), got {global_resize!r}'
            )
        check_positive_int('DSNet in_channels', in_channels)
        for name, switch in (
            ('with_alignment', with_alignment),
            ('norm_eval', norm_eval),
            ('with_cp', with_cp),
            ('channels_last', channels_last),
            ('final_norm', final_norm),
        ):
            check_bool(f'DSNet {name}', switch)
        check_choice('DSNet attn_split', attn_split, ATTN_SPLIT_MODES)
        if final_norm and self.num_stages - 1 not in self.out_indices:
            raise ValueError(
                f'DSNet final_norm=True normalises the last stage (index {self.num_stages - 1}), '
                f'so out_indices must include it; got out_indices={self.out_indices}. Use '
                f'out_indices=({self.num_stages - 1},) for a classifier, or final_norm=False.'
            )
        if not isinstance(compile_blocks, (bool, dict)):
            raise TypeError(
                'DSNet compile_blocks must be True, False or a dict of torch.compile '
                f'arguments, got {compile_blocks!r}'
            )
        check_mlp_ratio('DSNet arch mlp_ratio', self.mlp_ratio, min(self.embed_dims))
        if norm_cfg is not None:
            check_nchw_norm_cfg('DSNet norm_cfg', norm_cfg)
        for name, rate in (
            ('drop_rate', drop_rate),
            ('attn_drop_rate', attn_drop_rate),
            ('drop_path_rate', drop_path_rate),
        ):
            check_rate(f'DSNet {name}', rate)
        self.in_channels = in_channels
        self.global_resize = tuple(global_resize)
        self.with_alignment = with_alignment
        self.frozen_stages = frozen_stages
        self.norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.channels_last = channels_last
        self.attn_split = attn_split
        # Only the stages up to the deepest requested output are built.
        self.num_built_stages = max(self.out_indices) + 1

        self._build_stages(drop_rate, attn_drop_rate, drop_path_rate)
        self.final_norm = final_norm
        if final_norm:
            self.norm = build_norm_layer(self.norm_cfg, self.embed_dims[-1])[1]
        self.compile_blocks = compile_blocks
        if compile_blocks:
            self._compile_blocks({} if compile_blocks is True else dict(compile_blocks))
        self._freeze_stages()

    def _build_stages(self, drop_rate: float, attn_drop_rate: float, drop_path_rate: float):
        """``patch_embeds`` and ``stages`` up to the deepest requested output, stage by stage."""
        rates = linear_drop_path_rates(drop_path_rate, self.depths)
        self.patch_embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        prev_channels = self.in_channels
        for i in range(self.num_built_stages):
            kernel = 4 if i == 0 else 2
            self.patch_embeds.append(
                nn.Conv2d(prev_channels, self.embed_dims[i], kernel, stride=kernel)
            )
            first = sum(self.depths[:i])
            blocks = [
                DSBlock(
                    self.embed_dims[i],
                    self.num_heads[i],
                    self.global_resize[i],
                    mlp_ratio=self.mlp_ratio,
                    with_alignment=self.with_alignment,
                    drop_rate=drop_rate,
                    attn_drop_rate=attn_drop_rate,
                    drop_path_rate=rates[first + j],
                    norm_cfg=self.norm_cfg,
                    with_cp=self.with_cp,
                    attn_split=self.attn_split,
                )
                for j in range(self.depths[i])
            ]
            self.stages.append(nn.Sequential(*blocks))
            prev_channels = self.embed_dims[i]
        # Keep probability of every built block's residuals, for one draw of
        # all their stochastic-depth scales per forward (``_drop_path_scales``).
        built = sum(self.depths[: self.num_built_stages])
        self.with_drop_path = any(rate > 0 for rate in rates[:built])
        keep = torch.tensor([1.0 - rate for rate in rates[:built]])
        self.register_buffer('drop_path_keep', keep.view(-1, 1, 1, 1, 1, 1), persistent=False)

    def _compile_blocks(self, options: dict) -> None:
        """``torch.compile`` each DS-Block in place (``nn.Module.compile``;
        the state dict keeps its keys), with dynamic shapes by default."""
        options.setdefault('dynamic', True)
        for stage in self.stages:
            for block in stage:
                block.compile(**options)

    @classmethod
    def parse_arch(cls, arch: Union[str, dict]) -> dict:
        """Resolve ``arch`` to a settings dict, with a clear error if invalid."""
        if isinstance(arch, str):
            name = cls.arch_aliases.get(arch.lower(), arch.lower())
            if name not in cls.arch_settings:
                raise ValueError(
                    f'Unknown DSNet arch {arch!r}; accepted: '
                    f'{sorted(cls.arch_settings)} (or {", ".join(map(repr, cls.arch_aliases))}) '
                    'or a dict with embed_dims, depths, num_heads'
                )
            return dict(cls.arch_settings[name])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        required = {'embed_dims', 'depths', 'num_heads'}
        missing = required - set(arch)
        unknown = set(arch) - required - {'mlp_ratio'}
        if missing or unknown:
            raise ValueError(
                f'DSNet arch dict needs keys {sorted(required)} '
                f"(optional 'mlp_ratio'); missing {sorted(missing)}, "
                f'unknown {sorted(unknown)}'
            )
        for key in required:
            if not isinstance(arch[key], (list, tuple)) or len(arch[key]) != cls.num_stages:
                raise ValueError(
                    f'arch[{key!r}] must be a list of {cls.num_stages} ints, got {arch[key]!r}'
                )
        for stage, (dims, depth, heads) in enumerate(
            zip(arch['embed_dims'], arch['depths'], arch['num_heads'])
        ):
            check_positive_int(f'arch embed_dims[{stage}]', dims, minimum=2)
            if dims % 2:
                raise ValueError(
                    f'arch embed_dims[{stage}]={dims} must be even (half '
                    'local, half global channels)'
                )
            check_positive_int(f'arch depths[{stage}]', depth)
            check_heads(f'arch num_heads[{stage}]', dims, heads)
        check_positive_float('arch mlp_ratio', arch.get('mlp_ratio', 4.0))
        return dict(arch)

    @classmethod
    def out_channels_of(
        cls, arch: Union[str, dict] = 'small', out_indices: Sequence[int] = (0, 1, 2, 3)
    ) -> List[int]:
        """Channels of each output, e.g. for a neck's ``in_channels``."""
        dims = cls.parse_arch(arch)['embed_dims']
        return [dims[i] for i in out_indices]

    def _check_out_indices(self, out_indices: Sequence[int]) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(out_indices)
        if (
            not out_indices
            or any(isinstance(i, bool) or not isinstance(i, int) for i in out_indices)
            or any(not 0 <= i < self.num_stages for i in out_indices)
            or list(out_indices) != sorted(set(out_indices))
        ):
            raise ValueError(
                'out_indices must be increasing, unique stage indices in '
                f'0..{self.num_stages - 1}, got {out_indices!r}'
            )
        return out_indices

    @property
    def out_channels(self) -> List[int]:
        return [self.embed_dims[i] for i in self.out_indices]

    def init_weights(self) -> None:
        """mmengine's ``BaseModule.init_weights``, with the ``Pretrained`` entry loaded here.

        As in mmseg's ``MixVisionTransformer``: without other ``init_cfg``
        entries, linear layers get the truncated-normal init of the reference
        code; with them, mmengine's ``BaseModule`` runs them (its
        per-parameter init log and its warning on a second call included).
        ``init_cfg`` is read now. The ``Pretrained`` entry, a dict or inside a
        list, comes last and goes through :func:`load_pretrained_dsnet` (read,
        convert, fit, load) instead of mmengine's unchecked loader.
        """
        first_call = not self.is_init
        pretrained = pretrained_checkpoint_of(self.init_cfg)
        other_inits = other_init_cfgs(self.init_cfg)
        if first_call and other_inits is None:
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    trunc_normal_init(module, std=0.02, bias=0.0)
                elif isinstance(module, nn.LayerNorm):
                    constant_init(module, val=1.0, bias=0.0)
        else:
            given = self.init_cfg
            self.init_cfg = other_inits  # mmengine would load Pretrained unchecked
            try:
                super().init_weights()
                if first_call:
                    init_stream_convs(self, other_inits)
            finally:
                self.init_cfg = given
        if first_call and pretrained is not None:
            self.is_init = False  # until the checkpoint is in: a failed load may be retried
            load_pretrained_dsnet(
                self,
                pretrained['checkpoint'],
                logger=MMLogger.get_current_instance(),
                prefix=pretrained['prefix'],
            )
        self.is_init = True

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        num_frozen = min(self.frozen_stages, self.num_built_stages)
        frozen = [*self.patch_embeds[: max(1, num_frozen)], *self.stages[:num_frozen]]
        if self.final_norm and num_frozen == self.num_stages:
            frozen.append(self.norm)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'DSNet':
        """Switch mode, then re-apply ``frozen_stages`` and ``norm_eval``."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'DSNet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'DSNet was built for {self.in_channels} input channels, '
                f'got {x.shape[1]} (shape {tuple(x.shape)})'
            )
        if min(x.shape[2:]) < self.min_input_size:
            raise ValueError(
                f'DSNet needs H and W >= {self.min_input_size}, got {tuple(x.shape[2:])}'
            )
        batch = x.shape[0]
        if batch and self.training and self._has_training_batch_norm():
            # BatchNorm in training needs two values per channel; the last
            # built stage has the fewest: its map of the padded input.
            stride = self.strides[self.num_built_stages - 1]
            padded_h, padded_w = self.padded_size(*x.shape[2:])
            values = batch * (padded_h // stride) * (padded_w // stride)
            if values < 2:
                raise ValueError(
                    f'DSNet in training mode with BatchNorm needs at least 2 values per channel '
                    f'in stage {self.num_built_stages} (stride {stride}); a batch of {batch} '
                    f'{tuple(x.shape[2:])} image(s) gives {values}. Use a larger batch or '
                    'input, norm_eval=True, or eval mode (any H, W >= 32 works there).'
                )

    def _has_training_batch_norm(self) -> bool:
        last = [self.stages[self.num_built_stages - 1]]
        if self.final_norm:
            last.append(self.norm)  # on the same (last) map
        return any(
            isinstance(m, _BatchNorm) and m.training for module in last for m in module.modules()
        )

    @classmethod
    def padded_size(cls, height: int, width: int) -> Tuple[int, int]:
        """(H, W) of an input after ``forward``'s zero padding: the next
        multiples of ``size_divisor``."""
        divisor = cls.size_divisor
        return (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)

    def _pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``x`` at the bottom/right to ``padded_size``, in the stages' layout."""
        height, width = x.shape[2:]
        padded_h, padded_w = self.padded_size(height, width)
        if (padded_h, padded_w) != (height, width):
            x = F.pad(x, (0, padded_w - width, 0, padded_h - height))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _drop_path_scales(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Every block's stochastic-depth scales (``DSBlock.drop_path_scales``)
        in one draw, (blocks, 2, B, 1, 1, 1); None in eval mode or without
        drop path. A block in eval mode (frozen) or at rate 0 ignores its own."""
        if not (self.training and self.with_drop_path):
            return None
        keep = self.drop_path_keep.to(x.dtype)
        shape = (keep.shape[0], 2, x.shape[0], 1, 1, 1)
        return torch.bernoulli(keep.expand(shape)).div_(keep)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Return ``len(out_indices)`` maps; output i has shape
        (B, C_i, ceil(H / s_i), ceil(W / s_i)) with strides s = 4, 8, 16, 32.

        Inputs whose sides are not multiples of 32 are zero-padded at the
        bottom/right (as mmdet's ``pad_size_divisor=32`` would) so every stage
        sees whole patches and an exact global grid; outputs are cropped back.
        With ``final_norm`` the last output is normalised by ``norm``.
        """
        self._check_input(x)
        height, width = x.shape[2:]
        x = self._pad_input(x)
        scales = self._drop_path_scales(x)
        outs = []
        block_index = 0
        for i in range(self.num_built_stages):
            x = self.patch_embeds[i](x)
            for block in self.stages[i]:
                x = block(x, None if scales is None else scales[block_index])
                block_index += 1
            if i in self.out_indices:
                stride = self.strides[i]
                out = x[..., : math.ceil(height / stride), : math.ceil(width / stride)]
                if self.final_norm and i == self.num_stages - 1:
                    out = self.norm(out)
                outs.append(out.contiguous())
        return tuple(outs)
