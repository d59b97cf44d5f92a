"""The DS-Block: a local depthwise stream and a global attention stream, fused
by bidirectional co-attention (Inter-scale Alignment).

Module names equal those of the public DS-Net checkpoints (``pos_embed``,
``norm1``, ``conv1``, ..., ``mlp.fc2``) so weights map one to one; the order
of operations follows ``docs/architecture.md``, "The DS-Block", exactly.
"""

import weakref
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

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


def split_heads(tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, 3*C) packed [q | k | v] -> (3, B, heads, L, C // heads)."""
    batch, length, packed = tokens.shape
    head_dims = packed // (3 * num_heads)
    return tokens.view(batch, length, 3, num_heads, head_dims).permute(2, 0, 3, 1, 4)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


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
        self.conv1 = nn.Conv2d(embed_dims, embed_dims, 1)
        self.conv2 = nn.Conv2d(embed_dims, embed_dims, 1)
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
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
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

    def _global_self_attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens + MHSA(LN(tokens)) without output projection; (B, M, C/2)."""
        q, k, v = split_heads(self.channel_up(self.norm_sa1(tokens)), self.num_heads)
        return tokens + merge_heads(self._attention(q, k, v))

    def _align(
        self, local: torch.Tensor, tokens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Bidirectional co-attention between the local map and global tokens.

        Both directions read the same inputs. Returns the updated local map
        (B, C/2, H, W) and global tokens (B, M, C/2).
        """
        batch, half, height, width = local.shape
        local_qkv = self.cross_channel_up_conv(self.norm_conv2(local))
        # Token-major (B, N, 3C/2): free for a channels-last map. The fused
        # kernel needs unit stride along the head dimension; with a strided
        # view it silently falls back to the math path, which materialises
        # the N x M attention maps.
        q_l, k_l, v_l = split_heads(to_tokens(local_qkv), self.num_heads)
        q_g, k_g, v_g = split_heads(self.cross_channel_up_sa(self.norm_sa2(tokens)), self.num_heads)
        global_to_local = merge_heads(self._attention(q_l, k_g, v_g))
        local_to_global = merge_heads(self._attention(q_g, k_l, v_l))
        local = local + to_map(self.fuse_channel_conv(global_to_local), height, width)
        tokens = tokens + self.fuse_channel_sa(local_to_global)
        return local, tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to a (B, C, H, W) map; channels-last is fastest.
        With ``with_cp``, under activation checkpointing while ``x`` needs a
        gradient."""
        if self.with_cp and x.requires_grad:
            return checkpointed(self._forward, self, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's computation (``forward`` adds the checkpointing).

        ``conv1`` and ``conv2`` are 1x1 and bilinear resampling mixes pixels
        with weights that sum to one, so the two commute exactly: the global
        half of ``conv1`` runs after the downsampling and the global half of
        ``conv2`` before the upsampling, on the small grid. This is the
        spec's order of operations up to float rounding, without the
        full-resolution global channels, the channel slices and the concat.
        """
        x = x + self.pos_embed(x)
        shortcut = x
        height, width = x.shape[2:]
        half = self.embed_dims // 2
        normed = self.norm1(x)
        # conv1's output: global channels first, local channels second.
        local = F.conv2d(normed, self.conv1.weight[half:], self.conv1.bias[half:])
        local = local + self.conv(self.norm_conv1(local))

        grid = self.global_size(height, width)
        small = F.interpolate(normed, size=grid, mode='bilinear', align_corners=False)
        tokens = to_tokens(F.conv2d(small, self.conv1.weight[:half], self.conv1.bias[:half]))
        tokens = self._global_self_attention(tokens)
        if self.with_alignment:
            local, tokens = self._align(local, tokens)
        # conv2's input: local channels first, global channels second. The
        # global half as a linear map of the tokens: the same 1x1 conv,
        # without a channels-last view of the grid going into a conv (which
        # torch.compile's inductor cannot order the strides of when the grid
        # size is symbolic).
        global_out = to_map(F.linear(tokens, self.conv2.weight[:, half:].flatten(1)), *grid)
        fused = F.conv2d(local, self.conv2.weight[:, :half], self.conv2.bias)
        fused = fused + F.interpolate(
            global_out, size=(height, width), mode='bilinear', align_corners=False
        )
        x = shortcut + self.drop_path(fused)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def linear_drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list:
    """Stochastic-depth rate per block, linear from 0 over all blocks."""
    check_rate('drop_path_rate', drop_path_rate)
    total = sum(depths)
    if total == 1:
        return [0.0]
    return [drop_path_rate * i / (total - 1) for i in range(total)]
