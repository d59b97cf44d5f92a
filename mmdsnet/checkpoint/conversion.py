"""Map DS-Net weights in the public layouts to this package's keys (no I/O).

A key map of a state dict: the weights arrive unwrapped from
:func:`~mmdsnet.checkpoint.reading.read_checkpoint` (or from a model).

Public layouts (``docs/architecture.md``, "Checkpoint layout"):

* timm / PyTorch (SteveTsui/DS-Net): ``patch_embed{k}.proj.*``, ``blocks{k}.{i}.*``,
  ``norm.*``, ``head.*``, often wrapped in ``{'model': ..., 'model_ema': ...}``;
* PaddleClas ``.pdparams``: same names, BN buffers ``_mean`` / ``_variance``
  without ``num_batches_tracked``, and Linear weights stored (in, out).

Ours: ``patch_embeds.{k-1}.*`` and ``stages.{k-1}.{i}.*`` with the per-block
names unchanged. The classification ``norm`` and ``head`` are dropped.
"""

import re
from collections import OrderedDict
from typing import Dict, Mapping

import numpy as np
import torch

STRIP_PREFIXES = ('module.', 'backbone.')
# Names of the per-block nn.Linear layers (Paddle stores their weight transposed).
LINEAR_LAYERS = (
    'channel_up',
    'cross_channel_up_sa',
    'fuse_channel_conv',
    'fuse_channel_sa',
    'head',
)
CLASSIFIER_PREFIXES = ('head.', 'norm.', 'pre_logits.')

_PUBLIC_KEY = re.compile(r'^(patch_embed|blocks)([1-4])\.')
_OUR_KEY = re.compile(r'^(patch_embeds|stages)\.')


def _strip_prefixes(state_dict: Dict[str, object]) -> Dict[str, object]:
    if any(k.startswith('backbone.') or k.startswith('module.backbone.') for k in state_dict):
        # A detector/segmentor checkpoint: keep the backbone only.
        state_dict = {
            k: v
            for k, v in state_dict.items()
            if k.startswith('backbone.') or k.startswith('module.backbone.')
        }
    out = {}
    for key, value in state_dict.items():
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def detect_layout(state_dict: Mapping[str, object]) -> str:
    """'timm', 'paddle', 'mmdsnet' or 'unknown' for prefix-stripped weights."""
    keys = list(state_dict)
    if any(_OUR_KEY.match(k) for k in keys):
        return 'mmdsnet'
    if any(_PUBLIC_KEY.match(k) for k in keys):
        if any(k.endswith('._mean') or k.endswith('._variance') for k in keys):
            return 'paddle'
        return 'timm'
    return 'unknown'


def require_dsnet_layout(state_dict: Mapping[str, object], source: str) -> None:
    """Refuse weights that have neither the public nor this package's DS-Net keys."""
    if detect_layout(_strip_prefixes(dict(state_dict))) == 'unknown':
        raise ValueError(
            f'{source} is not a DS-Net checkpoint: none of its {len(state_dict)} keys has '
            "the public layout ('patch_embed1.', 'blocks1.', ...) or mmdsnet's "
            f"('patch_embeds.', 'stages.'); keys: {', '.join(sorted(state_dict)[:5])}"
        )


def _paddle_to_torch(state_dict: Dict[str, object]) -> Dict[str, object]:
    out = OrderedDict()
    for key, value in state_dict.items():
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            continue  # e.g. Paddle's 'StructuredToParameterName@@' name table
        tensor = torch.as_tensor(np.asarray(value)) if isinstance(value, np.ndarray) else value
        layer, _, param = key.rpartition('.')
        if param == '_mean':
            out[f'{layer}.running_mean'] = tensor
            out[f'{layer}.num_batches_tracked'] = torch.tensor(0, dtype=torch.long)
        elif param == '_variance':
            out[f'{layer}.running_var'] = tensor
        elif param == 'weight' and layer.rpartition('.')[2] in LINEAR_LAYERS:
            out[key] = tensor.t().contiguous()
        else:
            out[key] = tensor
    return out


def _rename_public(key: str) -> str:
    match = _PUBLIC_KEY.match(key)
    stage = int(match.group(2)) - 1
    rest = key[match.end() :]
    if match.group(1) == 'patch_embed':
        return f'patch_embeds.{stage}.{rest.removeprefix("proj.")}'
    return f'stages.{stage}.{rest}'


def dsnet_convert(
    state_dict: Mapping[str, object], logger=None
) -> 'OrderedDict[str, torch.Tensor]':
    """Map the keys of DS-Net weights (a state dict) to this package's layout.

    Strips ``module.`` and ``backbone.``; maps the timm and PaddleClas
    layouts; drops the classification ``norm``/``head``. Weights already in
    our layout pass through. Unknown layouts pass through too, so the loader
    can report what did not match. Values are renamed, not read (PaddleClas
    linear weights are transposed), so check their layouts first.
    """
    state_dict = _strip_prefixes(dict(state_dict))
    layout = detect_layout(state_dict)
    if layout == 'paddle':
        state_dict = _paddle_to_torch(state_dict)
    converted, dropped = OrderedDict(), []
    for key, value in state_dict.items():
        if layout in ('timm', 'paddle'):
            if key.startswith(CLASSIFIER_PREFIXES):
                dropped.append(key)
                continue
            if not _PUBLIC_KEY.match(key):
                dropped.append(key)
                continue
            key = _rename_public(key)
        converted[key] = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
    if logger is not None:
        logger.info(
            f'DS-Net checkpoint layout: {layout}; {len(converted)} tensors '
            f'kept, {len(dropped)} classification-only tensors dropped'
            + (f': {", ".join(dropped)}' if dropped else '')
        )
    return converted
