"""Map DS-Net weights in the public layouts to this package's keys (no I/O).

A key map of a state dict: the weights arrive unwrapped from
:func:`~mmdsnet.checkpoint.reading.read_checkpoint` (or from a model).

Public layouts (``docs/architecture.md``, "Checkpoint layout"):

* timm / PyTorch (SteveTsui/DS-Net): ``patch_embed{k}.proj.*``, ``blocks{k}.{i}.*``,
  ``norm.*``, ``head.*``, often wrapped in ``{'model': ..., 'model_ema': ...}``;
* PaddleClas ``.pdparams``: same names, BN buffers ``_mean`` / ``_variance``
  without ``num_batches_tracked``, and Linear weights stored (in, out).

Ours: ``patch_embeds.{k-1}.*`` and ``stages.{k-1}.{i}.*`` with the per-block
names unchanged; the final ``norm.*`` is kept for a ``DSNet(final_norm=True)``
and dropped otherwise, the ``head`` is dropped. :func:`dsnet_classifier_convert`
keeps both, for mmpretrain's ``ImageClassifier`` (``backbone.*``, ``head.fc.*``).
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
CLASSIFIER_PREFIXES = ('head.', 'pre_logits.')
FINAL_NORM_PREFIX = 'norm.'

_PUBLIC_KEY = re.compile(r'^(patch_embed|blocks)([1-4])\.')
_OUR_KEY = re.compile(r'^(patch_embeds|stages)\.')


def _strip_prefixes(state_dict: Dict[str, object], keep: tuple = ()) -> Dict[str, object]:
    """Without ``module.`` and ``backbone.``; of a model with a ``backbone``
    (a detector, a segmentor, a classifier) only the backbone, and the
    top-level prefixes in ``keep``."""
    wanted = ('backbone.', 'module.backbone.') + keep + tuple(f'module.{k}' for k in keep)
    if any(k.startswith('backbone.') or k.startswith('module.backbone.') for k in state_dict):
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(wanted)}
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


def _torch_weights(state_dict: Mapping[str, object], keep: tuple = ()):
    """(layout, weights): prefixes stripped (:func:`_strip_prefixes`), Paddle's
    names and linear layouts made torch's."""
    state_dict = _strip_prefixes(dict(state_dict), keep)
    layout = detect_layout(state_dict)
    if layout == 'paddle':
        state_dict = _paddle_to_torch(state_dict)
    return layout, state_dict


def dsnet_convert(
    state_dict: Mapping[str, object], logger=None, with_norm: bool = False
) -> 'OrderedDict[str, torch.Tensor]':
    """Map the keys of DS-Net weights (a state dict) to this package's layout.

    Strips ``module.`` and ``backbone.``; maps the timm and PaddleClas
    layouts; drops the classification ``head``, and the final ``norm``
    unless ``with_norm`` (a ``DSNet(final_norm=True)``), in every layout.
    Weights already in our layout pass through. Unknown layouts pass through
    too, so the loader can report what did not match. Values are renamed,
    not read (PaddleClas linear weights are transposed), so check their
    layouts first.
    """
    layout, state_dict = _torch_weights(state_dict)
    converted, dropped = OrderedDict(), []
    for key, value in state_dict.items():
        if key.startswith(FINAL_NORM_PREFIX) and layout != 'unknown':
            if not with_norm:
                dropped.append(key)
                continue
        elif layout in ('timm', 'paddle'):
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


def dsnet_classifier_convert(
    state_dict: Mapping[str, object], source: str = 'the checkpoint', logger=None
) -> 'OrderedDict[str, torch.Tensor]':
    """DS-Net classifier weights as an mmpretrain ``ImageClassifier``'s state dict.

    The backbone as :func:`dsnet_convert` with ``with_norm=True``, under
    ``backbone.``; the public ``head.weight``/``head.bias`` (PaddleClas'
    weight transposed from (in, out)) as ``LinearClsHead``'s ``head.fc.*``.
    Takes the public layouts and an ImageClassifier's own weights; refuses
    weights without a head or a final norm (a backbone-only file) naming
    ``source``.
    """
    layout, weights = _torch_weights(state_dict, keep=('head.',))
    head = OrderedDict()
    for key in [k for k in weights if k.startswith('head.')]:
        name = key[len('head.') :].removeprefix('fc.')
        head[f'head.fc.{name}'] = weights.pop(key)
    backbone = dsnet_convert(weights, logger=logger, with_norm=True)
    has_norm = any(k.startswith(FINAL_NORM_PREFIX) for k in backbone)
    if set(head) != {'head.fc.weight', 'head.fc.bias'} or not has_norm:
        raise ValueError(
            f'{source} has no complete classifier (layout {layout!r}): a head '
            "('head.weight' and 'head.bias', or mmpretrain's 'head.fc.*') and the final "
            f"'norm.*' are needed, found head keys {sorted(head) or 'none'} and "
            f'{"a" if has_norm else "no"} final norm. A backbone-only or detection '
            'checkpoint converts without --classifier.'
        )
    fc_weight, norm_weight = head['head.fc.weight'], backbone['norm.weight']
    if fc_weight.dim() != 2 or fc_weight.shape[1] != norm_weight.shape[0]:
        raise ValueError(
            f'{source}: head weight {tuple(fc_weight.shape)} does not take the '
            f'{norm_weight.shape[0]} features of the final norm; (num_classes, '
            f'{norm_weight.shape[0]}) is accepted (PaddleClas stores (in, out); a '
            '.pdparams file is transposed when its BN buffers are named _mean/_variance)'
        )
    converted = OrderedDict((f'backbone.{k}', v) for k, v in backbone.items())
    converted.update((k, torch.as_tensor(v)) for k, v in head.items())
    return converted
