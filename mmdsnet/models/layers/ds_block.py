"""The DS-Block: a local depthwise stream and a global attention stream, fused
by bidirectional co-attention (Inter-scale Alignment).

Module names equal those of the public DS-Net checkpoints (``pos_embed``,
``norm1``, ``conv1``, ..., ``mlp.fc2``) so weights map one to one; the order
of operations follows ``docs/architecture.md``, "The DS-Block", exactly.
"""

import copy
import functools
import weakref
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule, initialize
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

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
from .activation_checkpointing import checkpointed
from .fused_attention import ATTN_SPLIT_MODES, attention


def to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> contiguous (B, H*W, C); no copy for a channels-last map."""
    batch, channels, height, width = feature_map.shape
    # Explicit sizes: -1 cannot be inferred for an empty batch.
    return feature_map.permute(0, 2, 3, 1).reshape(batch, height * width, channels).contiguous()


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) as a channels-last view (no copy)."""
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


def split_heads(tokens: torch.Tensor, num_heads: int) -> Tuple[torch.Tensor, ...]:
    """(B, L, 3*C) packed [q | k | v] -> q, k, v, each (B, heads, L, C // heads), views.

    Unbound along the packed dimension, so the backward stacks the three
    gradients straight into the packed layout (one operator, no copy).
    """
    batch, length, packed = tokens.shape
    head_dims = packed // (3 * num_heads)
    packed_heads = tokens.view(batch, length, 3, num_heads, head_dims)
    return tuple(part.transpose(1, 2) for part in packed_heads.unbind(2))


def merge_heads(tokens: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    batch, heads, length, head_dims = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, length, heads * head_dims)


class _GradStridesOfParam:
    """Tensor hook: hand a gradient on with its parameter's exact strides when
    the two differ only along size-1 dimensions.

    Convolutions on channels-last maps return weight gradients in
    channels-last strides. For 1x1 and depthwise weights, (O, I, 1, 1) and
    (C, 1, k, k), those differ from the parameter's only along the size-1
    dimension, so autograd's layout contract accepts the gradient as it is,
    while DDP's reducer compares strides literally and warns "Grad strides do
    not match bucket view strides". The memory order is the same, so the
    restrided gradient is a view (no copy, same values). Whether a backend
    returns such strides varies (oneDNN, single-thread CPU kernels and cuDNN
    differ), hence a hook rather than restrided parameters.
    """

    def __init__(self, param: torch.Tensor):
        self.param = weakref.ref(param)

    def __call__(self, grad: torch.Tensor) -> Optional[torch.Tensor]:
        param = self.param()
        if (
            param is None
            or grad.layout != torch.strided
            or grad.shape != param.shape
            or grad.stride() == param.stride()
        ):
            return None
        for size, grad_stride, param_stride in zip(grad.shape, grad.stride(), param.stride()):
            if size != 1 and grad_stride != param_stride:
                return None  # another memory order: autograd copies it as usual
        return grad.as_strided(grad.shape, param.stride(), grad.storage_offset())


def match_grad_strides(module: nn.Module) -> None:
    """Give the gradients of ``module``'s parameters that have a size-1
    dimension the parameter's strides (see ``_GradStridesOfParam``).

    Idempotent. Tensor hooks are not copied by ``copy.deepcopy`` or pickled,
    so ``DSBlock.train()`` calls this again.
    """
    for param in module.parameters():
        if not param.requires_grad or 1 not in param.shape:
            continue
        hooks = param._backward_hooks or {}
        if not any(isinstance(hook, _GradStridesOfParam) for hook in hooks.values()):
            param.register_hook(_GradStridesOfParam(param))


class ConvMlp(nn.Module):
    """Pointwise FFN on NCHW maps: 1x1 conv, exact GELU, dropout, 1x1 conv."""

    def __init__(self, channels: int, hidden_channels: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden_channels, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_channels, channels, 1)
        self.drop = nn.Dropout(drop)

    def forward(
        self, x: torch.Tensor, fc1: Optional[Callable] = None, fc2: Optional[Callable] = None
    ) -> torch.Tensor:
        """The FFN; ``fc1`` or ``fc2`` given replaces that layer (a BatchNorm
        folded in, weights cast: ``DSBlock._weights``)."""
        x = (self.fc1 if fc1 is None else fc1)(x)
        x = self.drop(self.act(x))
        return self.drop((self.fc2 if fc2 is None else fc2)(x))


class StreamConv(nn.Module):
    """A C -> C 1x1 convolution kept as one weight per stream.

    ``conv1`` of a block produces the global channels first and the local
    ones second (``split='out'``: ``global_weight``, ``global_bias``,
    ``local_weight``, ``local_bias``); ``conv2`` reads the local channels
    first and the global ones second (``split='in'``: ``local_weight``,
    ``global_weight`` and the whole bias as ``local_bias``, added with the
    local half). The block runs the two halves at
    different resolutions; separate parameters spare it the slicing of one
    weight per call (a slice, a zero-filled gradient and a sum per piece and
    step). The state dict holds ``weight`` and ``bias`` as ``nn.Conv2d``'s
    would (the public checkpoints' keys and shapes), and loads them; only
    ``state_dict(keep_vars=True)`` hands out the parameters themselves under
    their own names. The initial values equal an ``nn.Conv2d``'s from the
    same random state.
    """

    def __init__(self, channels: int, split: str):
        super().__init__()
        if split not in ('in', 'out'):
            raise ValueError(f"StreamConv split must be 'in' or 'out', got {split!r}")
        self.channels = channels
        self.split = split
        half = channels // 2
        conv = nn.Conv2d(channels, channels, 1)
        weight, bias = conv.weight.detach(), conv.bias.detach()
        if split == 'out':
            self.global_weight = nn.Parameter(weight[:half].clone())
            self.local_weight = nn.Parameter(weight[half:].clone())
            self.global_bias = nn.Parameter(bias[:half].clone())
            self.local_bias = nn.Parameter(bias[half:].clone())
        else:
            self.local_weight = nn.Parameter(weight[:, :half].clone())
            self.global_weight = nn.Parameter(weight[:, half:].clone())
            self.local_bias = nn.Parameter(bias.clone())
        self.register_state_dict_post_hook(StreamConv.pack_state)
        self.register_load_state_dict_pre_hook(StreamConv._unpack_state)

    def _parts(self) -> Dict[str, Tuple[str, ...]]:
        """Packed state-dict name -> its per-stream parameters, in packed order."""
        if self.split == 'out':
            return {
                'weight': ('global_weight', 'local_weight'),
                'bias': ('global_bias', 'local_bias'),
            }
        return {'weight': ('local_weight', 'global_weight'), 'bias': ('local_bias',)}

    def _packed(self, name: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tuple(parts), dim=0 if self.split == 'out' or name == 'bias' else 1)

    @property
    def weight(self) -> torch.Tensor:
        """The (C, C, 1, 1) weight of the equivalent ``nn.Conv2d`` (a new tensor)."""
        return self._packed('weight', [getattr(self, n) for n in self._parts()['weight']])

    @property
    def bias(self) -> torch.Tensor:
        """The (C,) bias of the equivalent ``nn.Conv2d`` (a new tensor)."""
        return self._packed('bias', [getattr(self, n) for n in self._parts()['bias']])

    @torch.no_grad()
    def load_packed(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Copy an ``nn.Conv2d``'s (C, C, 1, 1) weight and (C,) bias into the streams."""
        for name, packed in (('weight', weight), ('bias', bias)):
            parts = self._parts()[name]
            dim = 0 if self.split == 'out' or name == 'bias' else 1
            for part, value in zip(parts, packed.chunk(len(parts), dim=dim)):
                getattr(self, part).copy_(value)

    @staticmethod
    def pack_state(module, state_dict, prefix, local_metadata=None) -> None:
        """State-dict hook: ``prefix + 'weight'`` / ``'bias'`` in place of the
        per-stream entries; packs any such dict (gradients too)."""
        if isinstance(state_dict.get(prefix + 'local_weight'), nn.Parameter):
            # state_dict(keep_vars=True), e.g. for torch.jit's tracer: the
            # parameters themselves, under their own names.
            return
        for name, parts in module._parts().items():
            values = [state_dict.pop(prefix + part) for part in parts]
            state_dict[prefix + name] = module._packed(name, values)

    @staticmethod
    def _unpack_state(module, state_dict, prefix, *args) -> None:
        error_msgs = args[-1]
        for name, parts in module._parts().items():
            key = prefix + name
            if key not in state_dict:
                continue  # reported missing under the per-stream names
            packed = state_dict[key]
            shape = tuple(module.weight.shape if name == 'weight' else module.bias.shape)
            if not isinstance(packed, torch.Tensor) or tuple(packed.shape) != shape:
                found = tuple(packed.shape) if isinstance(packed, torch.Tensor) else packed
                error_msgs.append(
                    f'size mismatch for {key}: copying a param with shape {found} from '
                    f'checkpoint, the shape in current model is {shape}.'
                )
                state_dict.pop(key)
                continue
            state_dict.pop(key)
            dim = 0 if module.split == 'out' or name == 'bias' else 1
            for part, value in zip(parts, packed.chunk(len(parts), dim=dim)):
                state_dict[prefix + part] = value


def _conv2d_entries(init_cfg) -> list:
    """The mmengine initialiser entries of ``init_cfg`` that name ``layer='Conv2d'``, without
    their ``override`` (which names children a lone convolution does not have)."""
    entries = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    chosen = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get('type') == 'Pretrained':
            continue
        layers = entry.get('layer') or []
        if 'Conv2d' in ([layers] if isinstance(layers, str) else layers):
            chosen.append({k: v for k, v in copy.deepcopy(entry).items() if k != 'override'})
    return chosen


def init_stream_convs(module: nn.Module, init_cfg) -> None:
    """Give every ``StreamConv`` in ``module`` what the ``layer='Conv2d'`` entries of
    ``init_cfg`` give an ``nn.Conv2d`` (e.g. FPN's Xavier init in DS-FPN): mmengine matches
    layers by class name, and a ``StreamConv`` keeps its weight per stream. The equivalent
    packed convolution is initialised and split back (same distribution as before the
    per-stream parameters; the random numbers are drawn after the other layers')."""
    entries = _conv2d_entries(init_cfg)
    if not entries:
        return
    for stream_conv in (m for m in module.modules() if isinstance(m, StreamConv)):
        weight = stream_conv.weight
        conv = nn.utils.skip_init(
            nn.Conv2d, stream_conv.channels, stream_conv.channels, 1,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(stream_conv.bias)
        initialize(conv, entries)
        stream_conv.load_packed(conv.weight, conv.bias)


class DSBlock(BaseModule):
    """Dual-stream block on an NCHW map.

    Args:
        embed_dims (int): Width C of the block (input = output).
        num_heads (int): Heads of the global self-attention and of both
            co-attention directions; head size is (C / 2) / num_heads.
        global_resize (int): The global stream runs on the map shrunk by this
            factor (floor, at least one token per axis).
        mlp_ratio (float): FFN hidden width over C.
        with_alignment (bool): Build the Inter-scale Alignment (co-attention).
            ``False`` gives the paper's unstarred variants.
        drop_rate (float): Dropout after the FFN layers.
        attn_drop_rate (float): Dropout on every attention map.
        drop_path_rate (float): Stochastic depth on the two outer residuals.
        norm_cfg (dict): Norm of the NCHW branches (BN in the checkpoints).
            The global tokens always use LayerNorm, as in the checkpoints.
        with_cp (bool): Activation checkpointing: while the input needs a
            gradient, keep only the block's input for backward and recompute
            the rest then (one more forward, BN statistics updated once).
        attn_split (str): How the attention calls fill a GPU
            (``fused_attention.attention``): 'auto' folds queries and splits
            keys where a call would start too few thread blocks on CUDA,
            'never' runs plain SDPA, 'always' folds and splits every call on
            any device (for tests and benchmarks).
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        global_resize: int,
        mlp_ratio: float = 4.0,
        with_alignment: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_cfg: Optional[dict] = None,
        with_cp: bool = False,
        attn_split: str = 'auto',
        init_cfg=None,
    ):
        super().__init__(init_cfg=init_cfg)
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        check_positive_int('DSBlock embed_dims', embed_dims, minimum=2)
        if embed_dims % 2:
            raise ValueError(
                f'DSBlock embed_dims must be even (half local, half global), got {embed_dims}'
            )
        half = embed_dims // 2
        check_heads('DSBlock num_heads', embed_dims, num_heads)
        check_positive_int('DSBlock global_resize', global_resize)
        check_mlp_ratio('DSBlock mlp_ratio', mlp_ratio, embed_dims)
        check_bool('DSBlock with_alignment', with_alignment)
        check_bool('DSBlock with_cp', with_cp)
        check_nchw_norm_cfg('DSBlock norm_cfg', norm_cfg)
        check_rate('DSBlock drop_rate', drop_rate)
        check_rate('DSBlock attn_drop_rate', attn_drop_rate)
        check_rate('DSBlock drop_path_rate', drop_path_rate)
        check_choice('DSBlock attn_split', attn_split, ATTN_SPLIT_MODES)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.global_resize = global_resize
        self.with_alignment = with_alignment
        self.attn_drop_rate = attn_drop_rate
        self.with_cp = with_cp
        self.attn_split = attn_split

        def norm(num_features):
            return allow_one_value_groups(build_norm_layer(norm_cfg, num_features)[1])

        # Conditional position encoding, pre-norm and 1x1 mixing before the split.
        self.pos_embed = nn.Conv2d(embed_dims, embed_dims, 3, padding=1, groups=embed_dims)
        self.norm1 = norm(embed_dims)
        self.conv1 = StreamConv(embed_dims, split='out')
        self.conv2 = StreamConv(embed_dims, split='in')
        # Intra-scale propagation: local depthwise conv, global self-attention.
        self.norm_conv1 = norm(half)
        self.norm_sa1 = nn.LayerNorm(half)
        self.conv = nn.Conv2d(half, half, 3, padding=1, groups=half)
        self.channel_up = nn.Linear(half, 3 * half)
        if with_alignment:
            # Inter-scale alignment: packed q/k/v per stream, one output
            # projection per direction.
            self.cross_channel_up_conv = nn.Conv2d(half, 3 * half, 1)
            self.cross_channel_up_sa = nn.Linear(half, 3 * half)
            self.fuse_channel_conv = nn.Linear(half, half)
            self.fuse_channel_sa = nn.Linear(half, half)
            self.norm_conv2 = norm(half)
            self.norm_sa2 = nn.LayerNorm(half)
        self.norm2 = norm(embed_dims)
        self.mlp = ConvMlp(embed_dims, int(embed_dims * mlp_ratio), drop_rate)
        # Holds the rate; the block applies it in ``_residual`` (one random
        # draw for both residuals, the scale multiplied into the sum).
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self._folded_cache: Optional[Tuple[tuple, _Weights]] = None
        match_grad_strides(self)

    def train(self, mode: bool = True) -> 'DSBlock':
        """Switch mode; re-register the gradient-stride hooks that a deep
        copy of the block drops."""
        super().train(mode)
        if mode:
            match_grad_strides(self)
        return self

    def global_size(self, height: int, width: int) -> Tuple[int, int]:
        """Grid of the global stream for a (height, width) map."""
        return (max(1, height // self.global_resize), max(1, width // self.global_resize))

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dropout = self.attn_drop_rate if self.training else 0.0
        return attention(q, k, v, dropout, self.attn_split)

    def _global_self_attention(
        self, tokens: torch.Tensor, weights: Optional['_Weights'] = None
    ) -> torch.Tensor:
        """tokens + MHSA(LN(tokens)) without output projection; (B, M, C/2).
        ``weights``: the block's own modules unless given (``_weights``)."""
        weights = self._live_weights() if weights is None else weights
        q, k, v = split_heads(weights.channel_up(self.norm_sa1(tokens)), self.num_heads)
        return tokens + merge_heads(self._attention(q, k, v))

    def _align(
        self, local: torch.Tensor, tokens: torch.Tensor, weights: Optional['_Weights'] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Bidirectional co-attention between the local map and global tokens.

        Both directions read the same inputs. Returns the updated local map
        (B, C/2, H, W) and global tokens (B, M, C/2). ``weights``: the
        block's own modules unless given (``_weights``).
        """
        weights = self._live_weights() if weights is None else weights
        batch, half, height, width = local.shape
        local_qkv = weights.cross_channel_up_conv(weights.norm_conv2(local))
        # Token-major (B, N, 3C/2): free for a channels-last map. The fused
        # kernel needs unit stride along the head dimension; with a strided
        # view it silently falls back to the math path, which materialises
        # the N x M attention maps.
        q_l, k_l, v_l = split_heads(to_tokens(local_qkv), self.num_heads)
        q_g, k_g, v_g = split_heads(
            weights.cross_channel_up_sa(self.norm_sa2(tokens)), self.num_heads
        )
        global_to_local = merge_heads(self._attention(q_l, k_g, v_g))
        local_to_global = merge_heads(self._attention(q_g, k_l, v_l))
        local = add_projection(local, global_to_local, weights.fuse_channel_conv)
        tokens = add_projection(tokens, local_to_global, weights.fuse_channel_sa)
        return local, tokens

    def forward(
        self, x: torch.Tensor, drop_path_scales: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Apply the block to a (B, C, H, W) map; channels-last is fastest.
        With ``with_cp``, under activation checkpointing while ``x`` needs a
        gradient. ``drop_path_scales``: see ``drop_path_scales``."""
        if self.with_cp and x.requires_grad:
            forward = functools.partial(self._forward, drop_path_scales=drop_path_scales)
            return checkpointed(forward, self, x)
        return self._forward(x, drop_path_scales)

    @property
    def drop_path_rate(self) -> float:
        return getattr(self.drop_path, 'drop_prob', 0.0)

    def drop_path_scales(
        self, x: torch.Tensor, drawn: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]:
        """Stochastic depth of the two residuals, as mmcv's ``DropPath``: per
        image 0 (dropped, with probability ``drop_path_rate``) or
        1 / (1 - rate), (2, B, 1, 1, 1); None when nothing is dropped (eval
        mode or rate 0). ``drawn`` is such a draw made by the caller (``DSNet``
        draws every block's at once); without it the block draws its own."""
        rate = self.drop_path_rate
        if not (self.training and rate > 0):
            return None
        if drawn is not None:
            return drawn
        keep = 1.0 - rate
        shape = (2, x.shape[0]) + (1,) * (x.dim() - 1)
        return x.new_empty(shape).bernoulli_(keep).div_(keep)

    @staticmethod
    def _residual(
        shortcut: torch.Tensor,
        branch: torch.Tensor,
        scales: Optional[torch.Tensor],
        index: int,
    ) -> torch.Tensor:
        """shortcut + branch, the branch scaled per image by ``scales[index]``
        (stochastic depth) when given."""
        if scales is None:
            return shortcut + branch
        return _ScaledResidual.apply(shortcut, branch, scales[index])

    def _forward(
        self, x: torch.Tensor, drop_path_scales: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The block's computation (``forward`` adds the checkpointing).

        ``conv1`` and ``conv2`` are 1x1 and bilinear resampling mixes pixels
        with weights that sum to one, so the two commute exactly: the global
        half of ``conv1`` runs after the downsampling and the global half of
        ``conv2`` before the upsampling, on the small grid. This is the
        spec's order of operations up to float rounding, without the
        full-resolution global channels and the concat. The same argument
        moves ``norm1`` (a per-channel affine map in eval) past the
        resampling, into ``conv1`` (``folded_weights``).
        """
        weights = self._weights(x)
        scales = self.drop_path_scales(x, drop_path_scales)
        pos = weights.pos_embed(x)
        x = pos if weights.pos_embed_has_identity else x + pos
        shortcut = x
        height, width = x.shape[2:]
        normed = weights.norm1(x)
        local = weights.conv1_local(normed)
        local = local + weights.conv(self.norm_conv1(local))

        grid = self.global_size(height, width)
        small = F.interpolate(normed, size=grid, mode='bilinear', align_corners=False)
        tokens = to_tokens(weights.conv1_global(small))
        tokens = self._global_self_attention(tokens, weights)
        if self.with_alignment:
            local, tokens = self._align(local, tokens, weights)
        # conv2's global half as a linear map of the tokens (the same 1x1
        # conv): no channels-last view of the grid goes into a conv, whose
        # strides torch.compile's inductor cannot order at a symbolic grid size.
        global_out = to_map(weights.conv2_global(tokens), *grid)
        fused = weights.conv2_local(local)
        fused = fused + F.interpolate(
            global_out, size=(height, width), mode='bilinear', align_corners=False
        )
        x = self._residual(shortcut, fused, scales, 0)
        mlp = self.mlp(weights.norm2(x), fc1=weights.fc1, fc2=weights.fc2)
        return self._residual(x, mlp, scales, 1)

    def _weights(self, x: torch.Tensor) -> '_Weights':
        """The layers ``_forward`` runs: the block's own modules while any
        forward hook watches the block (what an inspector hooks then runs),
        else the folded inference weights where they apply, the
        position-encoding residual inside its kernel in float32 training, and
        under autocast everything cast in one packed copy."""
        weights = self._live_weights()
        if self._hooked():
            return weights
        folded = self.folded_weights()
        if folded is not None:
            weights = folded
        elif self.training and not torch.is_autocast_enabled(x.device.type):
            # x + pos_embed(x) as one convolution: a one added at the kernel's
            # centre costs a tiny add instead of a gradient sum over the map.
            # Not under autocast, where the sum keeps the residual in float32.
            pos_embed = _Layer.of(self.pos_embed)
            weights = weights._replace(
                pos_embed=pos_embed._replace(weight=with_identity(pos_embed.weight)),
                pos_embed_has_identity=True,
            )
        return cast_for_autocast(weights, x)

    def _hooked(self) -> bool:
        return bool(_global_forward_hooks or _global_forward_pre_hooks) or any(
            m._forward_hooks or m._forward_pre_hooks for m in self.modules()
        )

    def _live_weights(self) -> '_Weights':
        """The block's modules as they are (per-stream ``conv1``/``conv2`` halves as layers)."""
        align = self.with_alignment
        return _Weights(
            pos_embed=self.pos_embed,
            pos_embed_has_identity=False,
            norm1=self.norm1,
            conv1_local=_Layer(F.conv2d, self.conv1.local_weight, self.conv1.local_bias),
            conv1_global=_Layer(F.conv2d, self.conv1.global_weight, self.conv1.global_bias),
            conv=self.conv,
            channel_up=self.channel_up,
            norm_conv2=self.norm_conv2 if align else None,
            cross_channel_up_conv=self.cross_channel_up_conv if align else None,
            cross_channel_up_sa=self.cross_channel_up_sa if align else None,
            fuse_channel_conv=self.fuse_channel_conv if align else None,
            fuse_channel_sa=self.fuse_channel_sa if align else None,
            conv2_local=_Layer(F.conv2d, self.conv2.local_weight, self.conv2.local_bias),
            conv2_global=_Layer(pointwise_linear, self.conv2.global_weight, None),
            norm2=self.norm2,
            fc1=self.mlp.fc1,
            fc2=self.mlp.fc2,
        )

    def _foldable_norms(self) -> Tuple[nn.Module, ...]:
        return (self.norm1, self.norm2) + ((self.norm_conv2,) if self.with_alignment else ())

    def folded_weights(self) -> Optional['_Weights']:
        """Inference weights with the eval-mode BatchNorms folded in, or None.

        In inference (eval mode, no autograd) with every BatchNorm that
        precedes a 1x1 convolution in eval mode with running statistics,
        ``norm1``, ``norm_conv2`` and ``norm2`` are per-channel affine maps
        and fold exactly into ``conv1``, ``cross_channel_up_conv`` and
        ``mlp.fc1``; ``pos_embed``'s residual becomes a one at the centre of
        its kernel, and the biases of ``fuse_channel_conv`` and
        ``fuse_channel_sa`` pass through ``conv2`` (1x1, and resampling keeps
        constants) into its bias. Equal to the unfolded block up to float
        rounding. The folded tensors are cached and recomputed whenever a
        parameter or running statistic they derive from changes (in-place
        version counter, storage or dtype).
        """
        if self.training or torch.is_grad_enabled():
            return None
        norms = self._foldable_norms()
        if not all(
            isinstance(n, _BatchNorm) and not n.training and n.running_mean is not None
            for n in norms
        ):
            return None
        sources = [*self.parameters(), *(b for n in norms for b in n.buffers())]
        if any(t.is_inference() for t in sources):
            return self._fold()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        if self._folded_cache is None or self._folded_cache[0] != key:
            self._folded_cache = (key, self._fold())
        return self._folded_cache[1]

    def _fold(self) -> '_Weights':
        """Compute ``folded_weights`` from the current parameters."""
        align = self.with_alignment
        pos_embed = _Layer.of(self.pos_embed)
        conv1 = self.conv1
        conv2_bias = self.conv2.local_bias
        folded = dict(
            pos_embed=pos_embed._replace(weight=with_identity(pos_embed.weight)),
            pos_embed_has_identity=True,
            norm1=nn.Identity(),
            conv1_local=fold_norm(self.norm1, conv1.local_weight, conv1.local_bias),
            conv1_global=fold_norm(self.norm1, conv1.global_weight, conv1.global_bias),
            norm2=nn.Identity(),
            fc1=fold_norm(self.norm2, self.mlp.fc1.weight, self.mlp.fc1.bias),
        )
        if align:
            cross = self.cross_channel_up_conv
            conv2_bias = (
                conv2_bias
                + self.conv2.local_weight.flatten(1) @ self.fuse_channel_conv.bias
                + self.conv2.global_weight.flatten(1) @ self.fuse_channel_sa.bias
            )
            folded.update(
                norm_conv2=nn.Identity(),
                cross_channel_up_conv=fold_norm(self.norm_conv2, cross.weight, cross.bias),
                fuse_channel_conv=_Layer(F.linear, self.fuse_channel_conv.weight, None),
                fuse_channel_sa=_Layer(F.linear, self.fuse_channel_sa.weight, None),
            )
        folded['conv2_local'] = _Layer(F.conv2d, self.conv2.local_weight, conv2_bias)
        return self._live_weights()._replace(**folded)


def pointwise_linear(
    tokens: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """A 1x1 convolution's (O, I, 1, 1) weight applied to (B, L, I) tokens."""
    return F.linear(tokens, weight.flatten(1), bias)


class _Layer(NamedTuple):
    """A convolution or linear layer as a function and its tensors: a
    module's own (``of``), or folded or cast ones."""

    function: Callable
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    options: Tuple[Tuple[str, object], ...] = ()

    @classmethod
    def of(cls, module: nn.Module) -> '_Layer':
        if isinstance(module, nn.Linear):
            return cls(F.linear, module.weight, module.bias)
        options = tuple(
            (name, getattr(module, name)) for name in ('stride', 'padding', 'dilation', 'groups')
        )
        return cls(F.conv2d, module.weight, module.bias, options)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, self.weight, self.bias, **dict(self.options))


#: A layer of ``_Weights``: the module itself or a ``_Layer``.
LayerLike = Union[nn.Module, _Layer]


class _Weights(NamedTuple):
    """What ``DSBlock._forward`` runs with (``DSBlock._weights``)."""

    pos_embed: LayerLike
    pos_embed_has_identity: bool
    norm1: nn.Module
    conv1_local: LayerLike
    conv1_global: LayerLike
    conv: LayerLike
    channel_up: LayerLike
    norm_conv2: Optional[nn.Module]
    cross_channel_up_conv: Optional[LayerLike]
    cross_channel_up_sa: Optional[LayerLike]
    fuse_channel_conv: Optional[LayerLike]
    fuse_channel_sa: Optional[LayerLike]
    conv2_local: LayerLike
    conv2_global: LayerLike
    norm2: nn.Module
    fc1: LayerLike
    fc2: LayerLike


class _ScaledResidual(torch.autograd.Function):
    """shortcut + branch * scale for a constant ``scale``: one operator
    forward, one backward (autograd's ``addcmul`` also multiplies the scale
    by its ``value`` in the backward)."""

    @staticmethod
    def forward(ctx, shortcut: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor):
        ctx.save_for_backward(scale)
        return torch.addcmul(shortcut, branch, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad, grad * scale, None


class _PackedCast(torch.autograd.Function):
    """Cast tensors of one dtype to another with one copy: concatenated,
    cast, and handed out as views; the backward casts the gradients back
    the same way. Under autocast every convolution and linear layer would
    cast its weight and bias apiece, forward and backward."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *tensors: torch.Tensor):
        ctx.source_dtype, ctx.dtype, ctx.device = tensors[0].dtype, dtype, tensors[0].device
        ctx.shapes = [t.shape for t in tensors]
        ctx.sizes = [t.numel() for t in tensors]
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(dtype)
        return tuple(p.view(shape) for p, shape in zip(flat.split(ctx.sizes), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads: Optional[torch.Tensor]):
        parts = [
            g.reshape(-1) if g is not None else torch.zeros(n, dtype=ctx.dtype, device=ctx.device)
            for g, n in zip(grads, ctx.sizes)
        ]
        flat = torch.cat(parts).to(ctx.source_dtype)
        return (None, *(p.view(shape) for p, shape in zip(flat.split(ctx.sizes), ctx.shapes)))


@functools.lru_cache(maxsize=64)
def _centre_ones(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        ones = torch.zeros(shape, dtype=dtype, device=device)
        ones[:, :, shape[2] // 2, shape[3] // 2] = 1
    return ones


def with_identity(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise kernel plus the identity: ``conv(x, with_identity(w))``
    is ``x + conv(x, w)`` (odd kernel, 'same' padding). The ones are built
    once per shape, dtype and device."""
    return weight + _centre_ones(weight.shape, weight.dtype, weight.device)


def cast_for_autocast(weights: _Weights, x: torch.Tensor) -> _Weights:
    """``weights`` with the float32 tensors of every convolution and linear
    layer in autocast's dtype, all in one cast (``_PackedCast``), when
    autocast is on for ``x``'s device; else as they are. The values equal
    autocast's own per-layer casts."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return weights
    layers = {
        name: value if isinstance(value, _Layer) else _Layer.of(value)
        for name, value in weights._asdict().items()
        if isinstance(value, (_Layer, nn.Linear, nn.Conv2d))
    }
    tensors = [
        (name, part, tensor)
        for name, layer in layers.items()
        for part, tensor in (('weight', layer.weight), ('bias', layer.bias))
        if tensor is not None and tensor.dtype == torch.float32
    ]
    if not tensors:
        return weights
    cast = _PackedCast.apply(torch.get_autocast_dtype(device), *(t for _, _, t in tensors))
    for (name, part, _), value in zip(tensors, cast):
        layers[name] = layers[name]._replace(**{part: value})
    return weights._replace(**layers)


def fold_norm(norm: _BatchNorm, weight: torch.Tensor, bias: torch.Tensor) -> _Layer:
    """The 1x1 convolution ``conv(norm(x))`` for an eval-mode BatchNorm with
    running statistics: the norm is x * scale + shift per input channel."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return _Layer(F.conv2d, weight * scale.view(1, -1, 1, 1), bias + weight.flatten(1) @ shift)


def add_projection(residual: torch.Tensor, values: torch.Tensor, layer: LayerLike) -> torch.Tensor:
    """residual + layer(values): the output projection of an attention added
    to its stream. ``residual`` is a (B, C, H, W) map or (B, L, C) tokens,
    ``values`` (B, L, C_in). A bias-free ``_Layer`` on a token-major residual
    (tokens, or a channels-last map) is one ``addmm``."""
    rows = None
    if isinstance(layer, _Layer) and layer.bias is None:
        if residual.dim() == 4 and residual.is_contiguous(memory_format=torch.channels_last):
            rows = residual.permute(0, 2, 3, 1).reshape(-1, residual.shape[1])
        elif residual.dim() == 3 and residual.is_contiguous():
            rows = residual.reshape(-1, residual.shape[-1])
    if rows is not None:
        summed = torch.addmm(rows, values.reshape(-1, values.shape[-1]), layer.weight.t())
        if residual.dim() == 3:
            return summed.view(residual.shape)
        batch, channels, height, width = residual.shape
        return to_map(summed.view(batch, height * width, channels), height, width)
    if residual.dim() == 4:
        return residual + to_map(layer(values), *residual.shape[2:])
    return residual + layer(values)


def linear_drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list:
    """Stochastic-depth rate per block, linear from 0 over all blocks."""
    check_rate('drop_path_rate', drop_path_rate)
    total = sum(depths)
    if total == 1:
        return [0.0]
    return [drop_path_rate * i / (total - 1) for i in range(total)]
