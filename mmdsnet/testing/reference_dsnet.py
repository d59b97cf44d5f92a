"""An explicit, unfused DS-Net classifier in the public checkpoint layout.

Yardstick only (tests and benchmarks), not a model to train: it names its
modules exactly as the public timm-style checkpoints do (``patch_embed{k}.proj``,
``blocks{k}.{i}``, ``norm``, ``head``), so its random ``state_dict()`` is a
checkpoint in the public layout, and it computes every attention map
explicitly (softmax(q k^T / sqrt(d)) v), as the public code does. It is written
from ``docs/architecture.md``, "The DS-Block".
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import DSNet  # only for its arch table: the reference computes on its own


def explicit_attention(q, k, v):
    """(B, heads, Lq, d) x (B, heads, Lk, d) -> (B, heads, Lq, d), materialised."""
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return attn.softmax(dim=-1) @ v


def _heads(x, num_heads):
    b, n, c3 = x.shape
    return x.reshape(b, n, 3, num_heads, c3 // 3 // num_heads).permute(2, 0, 3, 1, 4)


def _merge(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class ReferenceMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ReferenceBlock(nn.Module):
    """One DS-Block with the public parameter names, computed step by step."""

    def __init__(self, dim, num_heads, resize, mlp_ratio=4.0, with_alignment=True):
        super().__init__()
        c = dim // 2
        self.num_heads, self.resize, self.with_alignment = num_heads, resize, with_alignment
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm_conv1 = nn.BatchNorm2d(c)
        self.norm_sa1 = nn.LayerNorm(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.channel_up = nn.Linear(c, 3 * c)
        if with_alignment:
            self.cross_channel_up_conv = nn.Conv2d(c, 3 * c, 1)
            self.cross_channel_up_sa = nn.Linear(c, 3 * c)
            self.fuse_channel_conv = nn.Linear(c, c)
            self.fuse_channel_sa = nn.Linear(c, c)
            self.norm_conv2 = nn.BatchNorm2d(c)
            self.norm_sa2 = nn.LayerNorm(c)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ReferenceMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.pos_embed(x)
        residual = x
        b, dim, H, W = x.shape
        c = dim // 2
        x = self.conv1(self.norm1(x))
        x_global, x_local = x[:, :c], x[:, c:]
        x_local = x_local + self.conv(self.norm_conv1(x_local))
        h, w = max(1, H // self.resize), max(1, W // self.resize)
        g = F.interpolate(x_global, size=(h, w), mode='bilinear', align_corners=False)
        g = g.flatten(2).transpose(1, 2)
        q, k, v = _heads(self.channel_up(self.norm_sa1(g)), self.num_heads)
        g = g + _merge(explicit_attention(q, k, v))
        if self.with_alignment:
            lq, lk, lv = _heads(
                self.cross_channel_up_conv(self.norm_conv2(x_local)).flatten(2).transpose(1, 2),
                self.num_heads,
            )
            gq, gk, gv = _heads(self.cross_channel_up_sa(self.norm_sa2(g)), self.num_heads)
            to_local = self.fuse_channel_conv(_merge(explicit_attention(lq, gk, gv)))
            to_global = self.fuse_channel_sa(_merge(explicit_attention(gq, lk, lv)))
            x_local = x_local + to_local.transpose(1, 2).reshape(b, c, H, W)
            g = g + to_global
        g = g.transpose(1, 2).reshape(b, c, h, w)
        g = F.interpolate(g, size=(H, W), mode='bilinear', align_corners=False)
        x = residual + self.conv2(torch.cat([x_local, g], dim=1))
        return x + self.mlp(self.norm2(x))


class PatchEmbedRef(nn.Module):
    def __init__(self, in_ch, out_ch, size):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, size, stride=size)

    def forward(self, x):
        return self.proj(x)


class ReferenceDSNet(nn.Module):
    """Classifier with the public key layout; ``features()`` gives the 4 stage maps."""

    def __init__(
        self,
        embed_dims=(64, 128, 320, 512),
        depths=(3, 4, 8, 3),
        num_heads=(1, 2, 5, 8),
        mlp_ratio=4.0,
        global_resize=(8, 4, 2, 2),
        with_alignment=True,
        num_classes=1000,
    ):
        super().__init__()
        prev = 3
        for i in range(4):
            setattr(
                self, f'patch_embed{i + 1}', PatchEmbedRef(prev, embed_dims[i], 4 if i == 0 else 2)
            )
            setattr(
                self,
                f'blocks{i + 1}',
                nn.ModuleList(
                    [
                        ReferenceBlock(
                            embed_dims[i], num_heads[i], global_resize[i], mlp_ratio, with_alignment
                        )
                        for _ in range(depths[i])
                    ]
                ),
            )
            prev = embed_dims[i]
        self.norm = nn.BatchNorm2d(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)

    def features(self, x):
        outs = []
        for i in range(4):
            x = getattr(self, f'patch_embed{i + 1}')(x)
            for block in getattr(self, f'blocks{i + 1}'):
                x = block(x)
            outs.append(x)
        return outs

    def forward(self, x):
        x = self.norm(self.features(x)[-1])
        return self.head(x.mean(dim=(2, 3)))


def reference_for(arch='small', **kwargs) -> ReferenceDSNet:
    """A public-layout reference model with the settings of a DSNet arch."""
    settings = DSNet.parse_arch(arch)
    return ReferenceDSNet(
        embed_dims=settings['embed_dims'],
        depths=settings['depths'],
        num_heads=settings['num_heads'],
        mlp_ratio=settings.get('mlp_ratio', 4.0),
        **kwargs,
    )
