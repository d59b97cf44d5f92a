"""DS-FPN: an FPN whose pyramid levels are enhanced by DS-Blocks.

The paper adds DS-Blocks to the FPN "to enhance contextual information" but
publishes no layout (``docs/architecture.md``, "DS-FPN"). The layout here is a
documented engineering choice, fully configurable: by default every pyramid
level built from a backbone map gets one DS-Block of the FPN width (local
depthwise stream, global attention stream on a grid at 1/32 of the image,
co-attention between them), after the top-down sum and before the 3x3 output
conv. Extra levels (P6, P7) are left as in FPN.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from ...registry import register_model
from ..layers import ATTN_SPLIT_MODES, DSBlock, init_stream_convs
from ..utils.norm import allow_one_value_groups
from ..utils.validation import (
    check_bool,
    check_choice,
    check_heads,
    check_mlp_ratio,
    check_nchw_norm_cfg,
    check_positive_int,
    check_rate,
)

POSITIONS = ('pre_fpn_conv', 'post_fpn_conv', 'replace_fpn_conv')
EXTRA_SOURCES = ('on_input', 'on_lateral', 'on_output')
# FPN's default init (BaseModule deep-copies init_cfg, so sharing it is safe).
FPN_INIT = dict(type='Xavier', layer='Conv2d', distribution='uniform')


@register_model
class DSFPN(BaseModule):
    """FPN with DS-Blocks. Takes mmdet's/mmseg's ``FPN`` arguments unchanged,
    so a base config only swaps ``type='FPN'`` for ``type='DSFPN'``.

    FPN args: ``in_channels``, ``out_channels``, ``num_outs``, ``start_level``,
    ``end_level``, ``add_extra_convs``, ``relu_before_extra_convs``,
    ``no_norm_on_lateral``, ``conv_cfg``, ``norm_cfg``, ``act_cfg``,
    ``upsample_cfg``, ``init_cfg`` (same meaning as in mmdet's FPN; note
    that ``end_level`` is inclusive as in mmdet, while mmseg's FPN counts it
    exclusively).

    DS-Block args:
        ds_levels (Sequence[int], optional): Pyramid levels (0 = the first
            backbone level used, i.e. ``start_level``) that get DS-Blocks.
            Defaults to all levels built from backbone maps.
        num_ds_blocks (int): DS-Blocks per chosen level. 0 gives a plain FPN.
        ds_position (str): 'pre_fpn_conv' (after the top-down sum, before the
            3x3 conv), 'post_fpn_conv' (after it) or 'replace_fpn_conv'.
        strides (Sequence[int], optional): Stride (relative to the image) of
            each input map. Defaults to the last input at stride 32 and each
            earlier one at half the next: (4, 8, 16, 32) for four inputs (DSNet
            ``out_indices=(0, 1, 2, 3)``), (8, 16, 32) for three
            (``out_indices=(1, 2, 3)``). Give it for any other layout.
        ds_global_resize (Sequence[int], optional): Per chosen level, the
            factor between the level and its global grid. Defaults to
            ``max(1, 32 // stride)``, so every global grid sits at 1/32 of the
            image.
        ds_num_heads (int, optional): Defaults to a head size of 32.
        ds_mlp_ratio (float): FFN expansion of the DS-Blocks.
        ds_with_alignment (bool): Co-attention between the two streams.
        ds_norm_cfg (dict): Norm inside the DS-Blocks. GroupNorm by default:
            these blocks have no pretrained statistics and detection trains
            with 2 images per GPU.
        ds_drop_path_rate (float): Stochastic depth inside the DS-Blocks.
        ds_with_cp (bool): Activation checkpointing in every DS-Block
            (``DSBlock(with_cp=True)``): less training memory for one more
            forward of the blocks. Off by default.
        attn_split (str): How the DS-Blocks' attention calls fill a GPU:
            'auto', 'never' or 'always' (see ``DSBlock``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        end_level: int = -1,
        add_extra_convs: Union[bool, str] = False,
        relu_before_extra_convs: bool = False,
        no_norm_on_lateral: bool = False,
        conv_cfg: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        act_cfg: Optional[dict] = None,
        upsample_cfg: Optional[dict] = None,
        strides: Optional[Sequence[int]] = None,
        ds_levels: Optional[Sequence[int]] = None,
        num_ds_blocks: int = 1,
        ds_position: str = 'pre_fpn_conv',
        ds_global_resize: Optional[Sequence[int]] = None,
        ds_num_heads: Optional[int] = None,
        ds_mlp_ratio: float = 4.0,
        ds_with_alignment: bool = True,
        ds_norm_cfg: Optional[dict] = None,
        ds_drop_path_rate: float = 0.0,
        ds_with_cp: bool = False,
        attn_split: str = 'auto',
        init_cfg: Optional[Union[dict, List[dict]]] = FPN_INIT,
    ):
        super().__init__(init_cfg=init_cfg)
        self._set_fpn_args(
            in_channels, out_channels, num_outs, start_level, end_level, add_extra_convs
        )
        for name, switch in (
            ('relu_before_extra_convs', relu_before_extra_convs),
            ('no_norm_on_lateral', no_norm_on_lateral),
            ('ds_with_alignment', ds_with_alignment),
            ('ds_with_cp', ds_with_cp),
        ):
            check_bool(name, switch)
        check_choice('attn_split', attn_split, ATTN_SPLIT_MODES)
        for name, cfg in (('norm_cfg', norm_cfg), ('ds_norm_cfg', ds_norm_cfg)):
            if cfg is not None:
                check_nchw_norm_cfg(name, cfg)
        self.relu_before_extra_convs = relu_before_extra_convs
        self.no_norm_on_lateral = no_norm_on_lateral
        self.upsample_cfg = dict(mode='nearest') if upsample_cfg is None else dict(upsample_cfg)
        heads = self._set_ds_args(
            strides, ds_levels, num_ds_blocks, ds_position, ds_global_resize, ds_num_heads
        )
        check_mlp_ratio('ds_mlp_ratio', ds_mlp_ratio, out_channels)
        check_rate('ds_drop_path_rate', ds_drop_path_rate)
        self.ds_with_cp = ds_with_cp

        conv_args = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
        self._build_fpn_convs(conv_args)
        self.ds_blocks = self._build_ds_blocks(
            num_ds_blocks,
            heads,
            mlp_ratio=ds_mlp_ratio,
            with_alignment=ds_with_alignment,
            drop_path_rate=ds_drop_path_rate,
            norm_cfg=ds_norm_cfg or dict(type='GN', num_groups=32, requires_grad=True),
            with_cp=ds_with_cp,
            attn_split=attn_split,
        )
        self.extra_convs = self._build_extra_convs(conv_args)
        # The FPN convs' GroupNorm (norm_cfg) meets the same one-value groups
        # on the stride-32 and extra levels as the DS-Blocks'.
        for module in self.modules():
            allow_one_value_groups(module)

    @property
    def num_levels(self) -> int:
        """Pyramid levels built from backbone maps (``start_level`` to ``end_level``)."""
        return self.backbone_end_level - self.start_level

    def _set_fpn_args(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int,
        end_level: int,
        add_extra_convs: Union[bool, str],
    ) -> None:
        """Check FPN's level arguments as mmdet's FPN reads them, and keep them."""
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise TypeError(f'in_channels must be a non-empty list of ints, got {in_channels!r}')
        for channels in in_channels:
            check_positive_int('in_channels entries', channels)
        check_positive_int('out_channels', out_channels)
        for name, value in (
            ('num_outs', num_outs),
            ('start_level', start_level),
            ('end_level', end_level),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f'{name} must be an int, got {value!r}')
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        if end_level in (-1, self.num_ins - 1):
            self.backbone_end_level = self.num_ins
        elif 0 <= end_level < self.num_ins:
            self.backbone_end_level = end_level + 1
        else:
            raise ValueError(f'end_level must be -1 or in 0..{self.num_ins - 1}, got {end_level}')
        if not 0 <= start_level < self.backbone_end_level:
            raise ValueError(
                f'start_level must be in 0..{self.backbone_end_level - 1}, got {start_level}'
            )
        self.start_level = start_level
        self.end_level = end_level
        if num_outs < self.num_levels:
            raise ValueError(
                f'num_outs={num_outs} is smaller than the {self.num_levels} backbone levels used'
            )
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        if add_extra_convs not in (False, *EXTRA_SOURCES):
            raise ValueError(
                f'add_extra_convs must be a bool or one of {EXTRA_SOURCES}, got {add_extra_convs!r}'
            )
        self.add_extra_convs = add_extra_convs

    def _set_ds_args(
        self,
        strides: Optional[Sequence[int]],
        ds_levels: Optional[Sequence[int]],
        num_ds_blocks: int,
        ds_position: str,
        ds_global_resize: Optional[Sequence[int]],
        ds_num_heads: Optional[int],
    ) -> int:
        """Check and keep where the DS-Blocks go and their grids; return their head count."""
        if ds_position not in POSITIONS:
            raise ValueError(f'ds_position must be one of {POSITIONS}, got {ds_position!r}')
        self.ds_levels = self._check_ds_levels(ds_levels, self.num_levels)
        self.strides = self._check_strides(strides)
        if ds_global_resize is None:
            ds_global_resize = [
                max(1, 32 // self.strides[self.start_level + lvl]) for lvl in self.ds_levels
            ]
        if len(ds_global_resize) != len(self.ds_levels):
            raise ValueError(
                f'ds_global_resize needs one factor per ds_level '
                f'{self.ds_levels}, got {ds_global_resize}'
            )
        for factor in ds_global_resize:
            check_positive_int('ds_global_resize entries', factor)
        check_positive_int('num_ds_blocks', num_ds_blocks, minimum=0)
        self.ds_position = ds_position
        self.ds_global_resize = tuple(ds_global_resize)
        heads = max(1, self.out_channels // 2 // 32) if ds_num_heads is None else ds_num_heads
        if num_ds_blocks and self.ds_levels:
            check_heads('ds_num_heads', self.out_channels, heads)
        return heads

    def _build_fpn_convs(self, conv_args: dict) -> None:
        """FPN's 1x1 lateral and 3x3 output convs, level by level (an identity
        where ``ds_position='replace_fpn_conv'`` puts DS-Blocks instead)."""
        lateral_norm = None if self.no_norm_on_lateral else conv_args['norm_cfg']
        lateral_args = dict(conv_args, norm_cfg=lateral_norm)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for level in range(self.num_levels):
            channels = self.in_channels[self.start_level + level]
            self.lateral_convs.append(ConvModule(channels, self.out_channels, 1, **lateral_args))
            replaced = self.ds_position == 'replace_fpn_conv' and level in self.ds_levels
            self.fpn_convs.append(
                nn.Identity()
                if replaced
                else ConvModule(self.out_channels, self.out_channels, 3, padding=1, **conv_args)
            )

    def _build_ds_blocks(self, num_blocks: int, num_heads: int, **block_args) -> nn.ModuleDict:
        """``num_blocks`` DS-Blocks of the FPN width per level of ``ds_levels``, each
        at its level's global grid; ``block_args`` go to every ``DSBlock``."""
        blocks = nn.ModuleDict()
        if not num_blocks:
            return blocks
        for level, resize in zip(self.ds_levels, self.ds_global_resize):
            blocks[str(level)] = nn.Sequential(
                *[
                    DSBlock(self.out_channels, num_heads, resize, **block_args)
                    for _ in range(num_blocks)
                ]
            )
        return blocks

    def _build_extra_convs(self, conv_args: dict) -> nn.ModuleList:
        """FPN's stride-2 3x3 convs of the levels above the backbone's (none
        when ``add_extra_convs`` is False: those levels are max-pooled)."""
        convs = nn.ModuleList()
        if not self.add_extra_convs:
            return convs
        for i in range(self.num_outs - self.num_levels):
            channels = (
                self.in_channels[self.backbone_end_level - 1]
                if i == 0 and self.add_extra_convs == 'on_input'
                else self.out_channels
            )
            convs.append(
                ConvModule(channels, self.out_channels, 3, stride=2, padding=1, **conv_args)
            )
        return convs

    @staticmethod
    def _check_ds_levels(ds_levels: Optional[Sequence[int]], num_levels: int) -> Tuple[int, ...]:
        """All levels when None, else increasing, unique level indices (ints, not bools)."""
        if ds_levels is None:
            return tuple(range(num_levels))
        if isinstance(ds_levels, (list, tuple)):
            levels = tuple(ds_levels)
            if all(
                not isinstance(lvl, bool) and isinstance(lvl, int) and 0 <= lvl < num_levels
                for lvl in levels
            ) and list(levels) == sorted(set(levels)):
                return levels
        raise ValueError(
            f'ds_levels must index the {num_levels} backbone levels used '
            f'(0..{num_levels - 1}) as a list of increasing, unique ints, or be None '
            f'(all levels); got {ds_levels!r}'
        )

    def _check_strides(self, strides: Optional[Sequence[int]]) -> Tuple[int, ...]:
        if strides is None:
            return tuple(32 // 2 ** (self.num_ins - 1 - i) for i in range(self.num_ins))
        strides = tuple(strides)
        if (
            len(strides) != self.num_ins
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides)
            or any(a >= b for a, b in zip(strides, strides[1:]))
        ):
            raise ValueError(
                f'strides must give one increasing positive int per input '
                f'({self.num_ins} inputs), got {strides!r}'
            )
        return strides

    def _enhance(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Run the level's DS-Blocks (if any) in channels-last, their fast
        layout, and hand back a standard NCHW map."""
        if str(level) not in self.ds_blocks:
            return x
        x = self.ds_blocks[str(level)](x.contiguous(memory_format=torch.channels_last))
        return x.contiguous()

    def _upsample_to(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if 'scale_factor' in self.upsample_cfg:
            return F.interpolate(x, **self.upsample_cfg)
        return F.interpolate(x, size=reference.shape[2:], **self.upsample_cfg)

    def init_weights(self) -> None:
        """mmengine's init, and its ``layer='Conv2d'`` entries (FPN's Xavier by default) also
        on the DS-Blocks' per-stream 1x1 convolutions (``init_stream_convs``)."""
        first_call = not self.is_init
        super().init_weights()
        if first_call:
            init_stream_convs(self, self.init_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != self.num_ins:
            raise ValueError(
                f'DSFPN was built for {self.num_ins} inputs '
                f'(in_channels={self.in_channels}), got {len(inputs)}'
            )
        for i, (x, channels) in enumerate(zip(inputs, self.in_channels)):
            if x.shape[1] != channels:
                raise ValueError(
                    f'DSFPN input {i} has {x.shape[1]} channels, in_channels says {channels}'
                )
        laterals = [conv(inputs[self.start_level + i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._upsample_to(laterals[i], laterals[i - 1])

        outs = []
        for level, lateral in enumerate(laterals):
            if self.ds_position != 'post_fpn_conv':
                lateral = self._enhance(level, lateral)
            out = self.fpn_convs[level](lateral)
            if self.ds_position == 'post_fpn_conv':
                out = self._enhance(level, out)
            outs.append(out)

        if self.num_outs > len(outs):
            if not self.add_extra_convs:
                while len(outs) < self.num_outs:
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {
                    'on_input': inputs[self.backbone_end_level - 1],
                    'on_lateral': laterals[-1],
                    'on_output': outs[-1],
                }
                x = source[self.add_extra_convs]
                for i, conv in enumerate(self.extra_convs):
                    if i > 0 and self.relu_before_extra_convs:
                        x = F.relu(x)
                    x = conv(x)
                    outs.append(x)
        return tuple(outs)
