"""Explicit attention maps of DS-Blocks, recorded from outside the model.

A DS-Block computes all its attention through the fused
``F.scaled_dot_product_attention``, which never forms the probability maps.
``AttentionRecorder`` hooks the block's q/k projections and the two sides of
its Inter-scale Alignment while the model runs its ordinary forward (output
untouched), and recomputes ``softmax(q k^T / sqrt(d))`` from the captured
queries and keys afterwards. The hooks exist only for that one forward, so
the fused path costs exactly what it did, and the model knows nothing of them.

``record_block_attention`` does this for one block, ``record_backbone_attention``
for one block of a ``DSNet`` fed an image batch (plus the norm ratios of one
block per stage, if asked); ``attention_targets`` checks the choice of blocks
for both the Python API and ``tools/analysis_tools/visualize_attention.py``.

Maps are named query -> key, as the DS-Net paper names the co-attention:
``local_to_global`` holds, for every local pixel (query), its weights over the
global tokens (keys). ``DSBlock._align`` names the same call ``global_to_local``
after the direction in which the values flow (global values into local pixels).
"""

import contextlib
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..models.layers.ds_block import split_heads, to_tokens


def attention_probs(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) in float32: (B, heads, Lq, d) x (B, heads, Lk, d)
    -> (B, heads, Lq, Lk), the map ``F.scaled_dot_product_attention`` applies."""
    query, key = query.float(), key.float()
    scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5
    return scores.softmax(dim=-1)


@dataclass
class BlockAttention:
    """What one DS-Block attended to, for a batch of B maps of ``map_size``.

    Local pixels are numbered row-major over the block's (H, W) map (N = H*W),
    global tokens row-major over its (gh, gw) grid (M = gh*gw). Maps are
    probabilities before attention dropout (identical to the ones applied in
    eval mode); each row sums to 1 over its keys.

    Attributes:
        map_size: (H, W) of the block's local map (the padded input / stride).
        grid_size: (gh, gw) of the global grid.
        global_self: (B, heads, M, M) global self-attention, token -> token.
        local_to_global: (B, heads, N, M), pixel (query) -> global token.
        global_to_local: (B, heads, M, N), global token (query) -> pixel.
        local_ratio: (B, H, W) ||local after alignment - before|| / ||before||.
        global_ratio: (B, gh, gw) the same for the global tokens.
    """

    map_size: Tuple[int, int]
    grid_size: Tuple[int, int]
    global_self: Optional[torch.Tensor] = None
    local_to_global: Optional[torch.Tensor] = None
    global_to_local: Optional[torch.Tensor] = None
    local_ratio: Optional[torch.Tensor] = None
    global_ratio: Optional[torch.Tensor] = None


class AttentionRecorder:
    """Context manager hooking one ``DSBlock`` for a single forward.

    ``with_maps=False`` records only the alignment's norm ratios (no q/k kept,
    no attention map formed), which costs almost nothing.

    Example::

        with AttentionRecorder(block) as recorder:
            out = model(x)            # the ordinary fused forward, through the block
        maps = recorder.result()      # BlockAttention
    """

    def __init__(self, block: nn.Module, with_maps: bool = True):
        self.block = block
        self.with_maps = with_maps
        self._handles: List = []
        self._seen: Dict[str, object] = {}

    def _store(self, name: str, value) -> None:
        if name in self._seen:
            raise RuntimeError(
                f'AttentionRecorder: {name} ran twice while recording; '
                'record one forward of the block per recorder'
            )
        self._seen[name] = value

    def _output_hook(self, name, transform):
        return lambda module, args, output: self._store(name, transform(output))

    def _input_hook(self, name, transform):
        return lambda module, args: self._store(name, transform(args[0]))

    def __enter__(self) -> 'AttentionRecorder':
        block, heads = self.block, self.block.num_heads
        self._seen.clear()
        hooks = [(block, 'pre', 'size', lambda x: tuple(x.shape[-2:]))]
        if self.with_maps:
            hooks.append(
                (block.channel_up, 'post', 'self_qk', lambda out: split_heads(out, heads)[:2])
            )
        if block.with_alignment:
            if self.with_maps:
                hooks += [
                    (
                        block.cross_channel_up_conv,
                        'post',
                        'local_qk',
                        lambda out: split_heads(to_tokens(out), heads)[:2],
                    ),
                    (
                        block.cross_channel_up_sa,
                        'post',
                        'global_qk',
                        lambda out: split_heads(out, heads)[:2],
                    ),
                ]
            # Norm per pixel / token of the stream before the alignment and of
            # what the alignment adds to it (the fuse projections' outputs).
            hooks += [
                (block.norm_conv2, 'pre', 'local_norm', lambda x: x.norm(dim=1)),
                (block.fuse_channel_conv, 'post', 'local_delta', lambda t: t.norm(dim=-1)),
                (block.norm_sa2, 'pre', 'global_norm', lambda t: t.norm(dim=-1)),
                (block.fuse_channel_sa, 'post', 'global_delta', lambda t: t.norm(dim=-1)),
            ]
        for module, kind, name, transform in hooks:
            if kind == 'pre':
                handle = module.register_forward_pre_hook(self._input_hook(name, transform))
            else:
                handle = module.register_forward_hook(self._output_hook(name, transform))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _get(self, name: str):
        if name not in self._seen:
            raise RuntimeError(
                f'AttentionRecorder: the DSBlock forward did not produce '
                f'{name!r}; run a forward through the block inside the recorder '
                '(or the block no longer uses the hooked submodules)'
            )
        return self._seen[name]

    def result(self) -> BlockAttention:
        """The recorded maps and ratios of the forward run inside the recorder."""
        block = self.block
        size = self._get('size')
        grid = block.global_size(*size)
        result = BlockAttention(map_size=size, grid_size=grid)
        if self.with_maps:
            result.global_self = attention_probs(*self._get('self_qk'))
        if not block.with_alignment:
            return result
        if self.with_maps:
            q_l, k_l = self._get('local_qk')
            q_g, k_g = self._get('global_qk')
            result.local_to_global = attention_probs(q_l, k_g)
            result.global_to_local = attention_probs(q_g, k_l)
        batch = self._get('local_norm').shape[0]
        eps = torch.finfo(torch.float32).tiny
        result.local_ratio = self._get('local_delta').float().reshape(batch, *size) / self._get(
            'local_norm'
        ).float().clamp_min(eps)
        result.global_ratio = (
            self._get('global_delta').float() / self._get('global_norm').float().clamp_min(eps)
        ).reshape(batch, *grid)
        return result


@dataclass
class BackboneAttention:
    """Attention of one DS-Block of a ``DSNet`` and where its maps lie on the input.

    The backbone zero-pads its input at the bottom/right to ``padded_size``
    (multiples of 32); the block's local map and global grid cover the padded
    input, so a map drawn with extent ``(0, padded_w, padded_h, 0)`` and axis
    limits ``(0, input_w)``/``(input_h, 0)`` shows exactly the image area.

    Attributes:
        stage, block: Indices (from 0) of the block the maps come from.
        stride: Input pixels per local-map pixel in that stage.
        input_size, padded_size: (H, W) of the input before and after padding.
        maps: The chosen block's ``BlockAttention``.
        stage_ratios: Stage index -> (block index, ``BlockAttention`` holding
            norm ratios) for every stage asked for with ``ratio_blocks``.
    """

    stage: int
    block: int
    stride: int
    input_size: Tuple[int, int]
    padded_size: Tuple[int, int]
    maps: BlockAttention
    stage_ratios: Dict[int, Tuple[int, BlockAttention]] = field(default_factory=dict)

    def _check_point(self, x: float, y: float) -> None:
        height, width = self.input_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f'point ({x}, {y}) lies outside the {width}x{height} (W x H) input')

    def pixel_index(self, x: float, y: float) -> int:
        """Row-major index in the block's local map of input point (x, y)."""
        self._check_point(x, y)
        width = self.maps.map_size[1]
        return int(y // self.stride) * width + int(x // self.stride)

    def token_index(self, x: float, y: float) -> int:
        """Row-major index of the global token whose grid cell holds input point (x, y)."""
        self._check_point(x, y)
        (grid_h, grid_w), (pad_h, pad_w) = self.maps.grid_size, self.padded_size
        return int(y * grid_h // pad_h) * grid_w + int(x * grid_w // pad_w)

    def token_cell(self, index: int) -> Tuple[float, float, float, float]:
        """(x0, y0, width, height) in input pixels of global token ``index``'s cell."""
        (grid_h, grid_w), (pad_h, pad_w) = self.maps.grid_size, self.padded_size
        cell_h, cell_w = pad_h / grid_h, pad_w / grid_w
        row, col = divmod(index, grid_w)
        return col * cell_w, row * cell_h, cell_w, cell_h


class AttentionTargets(NamedTuple):
    """The blocks to record, as indices from 0 into ``DSNet.stages``."""

    stage: int
    block: int
    ratio_blocks: Dict[int, int]  # stage -> block whose norm ratios are recorded


@dataclass(frozen=True)
class TargetNames:
    """How a caller spells the choice of blocks, for the error messages.

    ``first`` is the number of the first stage and block: 0 in Python (like
    ``out_indices``), 1 on the command line. ``takes_none``: whether
    ``ratio_blocks=None`` (no norm ratios) can be given.
    """

    stage: str = 'stage'
    block: str = 'block'
    ratio_blocks: str = 'ratio_blocks'
    first: int = 0
    takes_none: bool = True


PYTHON_NAMES = TargetNames()


def _block_index(number, depth: int, first: int) -> Optional[int]:
    """Index from 0 of block ``number`` of a stage with ``depth`` blocks
    (numbers count from ``first``, negative ones from the end), or None."""
    if isinstance(number, bool) or not isinstance(number, int):
        return None
    if first <= number < depth + first:
        return number - first
    if -depth <= number < 0:
        return number + depth
    return None


def attention_targets(
    backbone: nn.Module,
    stage: int,
    block: int = -1,
    ratio_blocks: Optional[Union[str, int]] = None,
    names: TargetNames = PYTHON_NAMES,
) -> AttentionTargets:
    """Check a choice of blocks of ``backbone`` (a ``DSNet``) to record.

    ``stage`` must be a built stage; ``block`` a block of it (negative: from
    the end); ``ratio_blocks`` None, ``'last'`` (each built stage's last
    block) or a block number every built stage has. Numbers count from
    ``names.first``. Raises ValueError naming what was wrong and what is
    accepted.
    """
    built, first = backbone.num_built_stages, names.first
    if isinstance(stage, bool) or not isinstance(stage, int) or not first <= stage < built + first:
        raise ValueError(
            f'{names.stage} must be an int in {first}..{built - 1 + first} (this DSNet builds '
            f'{built} stages, out_indices={backbone.out_indices}), got {stage!r}'
        )
    stage_index = stage - first
    depth = backbone.depths[stage_index]
    block_index = _block_index(block, depth, first)
    if block_index is None:
        raise ValueError(
            f'stage {stage} has {depth} blocks: {names.block} must be an int in '
            f'{first}..{depth - 1 + first} (or -{depth}..-1 from the end), got {block!r}'
        )
    depths = tuple(backbone.depths[:built])
    if ratio_blocks is None and names.takes_none:
        return AttentionTargets(stage_index, block_index, {})
    if isinstance(ratio_blocks, str) and ratio_blocks == 'last':
        return AttentionTargets(stage_index, block_index, {i: d - 1 for i, d in enumerate(depths)})
    indices = [_block_index(ratio_blocks, d, first) for d in depths]
    if None in indices:
        shortest = min(depths)
        choices = "None, 'last'" if names.takes_none else "'last'"
        raise ValueError(
            f'{names.ratio_blocks} must be {choices} or a block number every built stage has '
            f'({first}..{shortest - 1 + first}, or -{shortest}..-1 from the end; depths '
            f'{depths}), got {ratio_blocks!r}'
        )
    return AttentionTargets(stage_index, block_index, dict(enumerate(indices)))


def record_block_attention(
    block: nn.Module, x: torch.Tensor, with_maps: bool = True
) -> Tuple[torch.Tensor, BlockAttention]:
    """Run ``block(x)``, its ordinary forward, and return ``(output, BlockAttention)``.

    The maps are the global self-attention and both co-attention directions
    (before attention dropout); the norm ratios those of the alignment.
    ``with_maps=False`` keeps only the cheap norm ratios.
    """
    with AttentionRecorder(block, with_maps=with_maps) as recorder:
        out = block(x)
    return out, recorder.result()


class _EnoughRecorded(Exception):
    """Ends a backbone forward once the last block to record has run."""


def _raise_enough_recorded(module, args, output):
    raise _EnoughRecorded


def record_backbone_attention(
    backbone: nn.Module,
    x: torch.Tensor,
    stage: int,
    block: int = -1,
    ratio_blocks: Optional[Union[str, int]] = None,
) -> BackboneAttention:
    """Record one block of ``backbone`` (a ``DSNet``) while it runs its forward on ``x``.

    Args:
        backbone: The DSNet; its ``forward`` runs unchanged (input checks
            and padding included) up to the last block recorded.
        x (Tensor): (B, C, H, W) input, as for ``backbone(x)``.
        stage (int): Stage index from 0 (stride 4, 8, 16, 32).
        block (int): Block index in the stage; negative counts from the end
            (-1, the default, is the stage's last block).
        ratio_blocks (str | int, optional): Also record the alignment's norm
            ratios of one block in every built stage: ``'last'`` for each
            stage's last block, or a block index.

    Returns:
        BackboneAttention: the chosen block's maps with the geometry that
        places them on the input. Nothing stays hooked afterwards.
    """
    targets = attention_targets(backbone, stage, block, ratio_blocks)
    return record_attention_targets(backbone, x, targets)


def record_attention_targets(
    backbone: nn.Module, x: torch.Tensor, targets: AttentionTargets
) -> BackboneAttention:
    """``record_backbone_attention`` for blocks ``attention_targets`` has checked."""
    chosen = (targets.stage, targets.block)
    wanted = sorted({chosen, *targets.ratio_blocks.items()})
    with contextlib.ExitStack() as hooks:
        recorders = {
            (i, j): hooks.enter_context(
                AttentionRecorder(backbone.stages[i][j], with_maps=(i, j) == chosen)
            )
            for i, j in wanted
        }
        last_stage, last_block = wanted[-1]
        stop = backbone.stages[last_stage][last_block].register_forward_hook(_raise_enough_recorded)
        hooks.callback(stop.remove)
        try:
            backbone(x)
        except _EnoughRecorded:
            pass
    results = {where: recorder.result() for where, recorder in recorders.items()}
    height, width = x.shape[2:]
    return BackboneAttention(
        stage=targets.stage,
        block=targets.block,
        stride=backbone.strides[targets.stage],
        input_size=(height, width),
        padded_size=backbone.padded_size(height, width),
        maps=results[chosen],
        stage_ratios={i: (j, results[(i, j)]) for i, j in targets.ratio_blocks.items()},
    )
