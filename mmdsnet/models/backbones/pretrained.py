"""Load a DS-Net checkpoint into a ``DSNet`` and say exactly what loaded.

Every form of ``init_cfg`` that names a checkpoint (a ``Pretrained`` dict,
alone or in a list) comes here. Fails loudly (naming the file and the likely
cause) on a missing, empty or unreadable file, non-tensor or non-finite
values, shape mismatches (another arch) or when most of the backbone finds
no weights (a checkpoint of another model); partial loads are logged key by
key.
"""

import os.path as osp
from typing import List, Optional, Union

import torch
import torch.nn as nn

from ...utils.compat import download_checkpoint, is_url
from ..utils.ckpt_convert import (
    check_tensors,
    check_weight_value,
    detect_layout,
    dsnet_convert,
    read_checkpoint,
    unwrap_state_dict,
)

# Below this share of loaded backbone tensors the load is treated as wrong.
MIN_LOADED_FRACTION = 0.9
PRETRAINED_KEYS = ('type', 'checkpoint', 'prefix', 'map_location')


def _init_cfg_entries(init_cfg: Union[None, dict, List[dict]]) -> List[dict]:
    if init_cfg is None:
        return []
    entries = list(init_cfg) if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for entry in entries:
        if not isinstance(entry, dict) or 'type' not in entry:
            raise TypeError(f'init_cfg entries must be dicts with a type, got {entry!r}')
    return entries


def pretrained_checkpoint_of(init_cfg: Union[None, dict, List[dict]]) -> Optional[dict]:
    """The ``Pretrained`` entry of ``init_cfg`` as ``dict(checkpoint, prefix)``.

    Accepts a dict or a list of dicts, as mmengine does; at most one entry
    may be ``Pretrained`` and it must name a checkpoint. None if there is none.
    """
    pretrained = [e for e in _init_cfg_entries(init_cfg) if e['type'] == 'Pretrained']
    if not pretrained:
        return None
    if len(pretrained) > 1:
        raise ValueError(
            f'DSNet init_cfg has {len(pretrained)} Pretrained entries; give '
            f'one checkpoint: {pretrained}'
        )
    entry = pretrained[0]
    unknown = set(entry) - set(PRETRAINED_KEYS)
    if unknown:
        raise ValueError(
            f'DSNet init_cfg Pretrained entry has unknown keys {sorted(unknown)}; '
            f'accepted: {list(PRETRAINED_KEYS)}'
        )
    checkpoint = entry.get('checkpoint')
    if not isinstance(checkpoint, str) or not checkpoint:
        raise ValueError(
            "DSNet init_cfg=dict(type='Pretrained') needs checkpoint=PATH, the path of a "
            f'DS-Net checkpoint file; got {entry!r}. Use init_cfg=None to train from scratch.'
        )
    prefix = entry.get('prefix')
    if prefix is not None and (not isinstance(prefix, str) or not prefix):
        raise ValueError(
            f'DSNet init_cfg Pretrained prefix must be a non-empty str '
            f"(e.g. 'backbone.'), got {prefix!r}"
        )
    return dict(checkpoint=checkpoint, prefix=prefix)


def other_init_cfgs(init_cfg: Union[None, dict, List[dict]]) -> Optional[List[dict]]:
    """The entries of ``init_cfg`` that are not ``Pretrained`` (None if none)."""
    others = [e for e in _init_cfg_entries(init_cfg) if e['type'] != 'Pretrained']
    return others or None


def _sample(keys, limit=5):
    keys = sorted(keys)
    more = f', ... ({len(keys)} in all)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _select_prefix(raw: dict, prefix: str, path: str) -> dict:
    state_dict, _ = unwrap_state_dict(raw)
    selected = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise RuntimeError(
            f'No key of {path} starts with prefix {prefix!r} (init_cfg '
            f'Pretrained prefix); keys: {_sample(state_dict) or "none"}'
        )
    return selected


def load_pretrained_dsnet(
    model: nn.Module, checkpoint_path: str, logger, prefix: Optional[str] = None
) -> None:
    """Convert and load ``checkpoint_path`` into ``model`` (a DSNet).

    ``prefix`` keeps only the keys that start with it (stripped), as
    mmengine's ``Pretrained`` init does. An http(s) URL is downloaded once
    into torch hub's cache and then read like a local file (weights-only).
    """
    path = str(checkpoint_path)
    if is_url(path):
        path = download_checkpoint(path)
    if not osp.lexists(path):
        raise FileNotFoundError(
            f'DSNet pretrained checkpoint not found: {path}. Convert the public '
            'weights with tools/model_converters/dsnet2mmdet.py (README, "Pretrained '
            'weights") or set init_cfg=None to train from scratch.'
        )
    try:
        raw = read_checkpoint(path)
    except OSError:  # not found, a directory: already say so
        raise
    except Exception as err:  # corrupt file, refused unpickling, ...
        raise RuntimeError(
            f'Could not read DS-Net checkpoint {path}: {type(err).__name__}: {err}'
        ) from err
    if prefix is not None:
        raw = _select_prefix(raw, prefix, path)
    # Layouts first, before any conversion copies a value (memory stays bounded).
    tensors = unwrap_state_dict(raw)[0]
    check_tensors({k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}, path)
    state_dict = dsnet_convert(raw, logger=logger)
    check_tensors(state_dict, path)
    expected = model.state_dict()
    layout = detect_layout(state_dict)

    mismatched = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    }
    if mismatched:
        key, (got, want) = next(iter(sorted(mismatched.items())))
        raise RuntimeError(
            f'{len(mismatched)} tensors of {path} do not fit this DSNet (e.g. {key}: '
            f'checkpoint {got} vs model {want}); the checkpoint is probably another '
            f'arch than {model.depths} / {model.embed_dims}.'
        )

    loadable = {k: v for k, v in state_dict.items() if k in expected}
    missing = set(expected) - set(loadable)
    unexpected = set(state_dict) - set(expected)
    fraction = len(loadable) / max(1, len(expected))
    if fraction < MIN_LOADED_FRACTION:
        raise RuntimeError(
            f'Only {len(loadable)}/{len(expected)} DSNet tensors found weights in {path} '
            f'(layout after conversion: {layout!r}): it holds another DS-Net arch '
            f"(depths {model.depths} expected) or another model's weights. "
            f'Checkpoint keys: '
            f'{_sample(state_dict) or "none"}'
        )

    # Keys of stages that are not built (out_indices stops early) are expected;
    # any other surplus key means the checkpoint has layers this model lacks.
    unbuilt = {
        k
        for k in unexpected
        if k.startswith(('stages.', 'patch_embeds.'))
        and int(k.split('.')[1]) >= model.num_built_stages
    }
    surplus = unexpected - unbuilt
    if surplus:
        raise RuntimeError(
            f'{len(surplus)} tensors of {path} have no place in this DSNet '
            f'(depths {model.depths}, with_alignment={model.with_alignment}): '
            f'{_sample(surplus)}; the checkpoint is another arch or variant.'
        )
    # Values last: only those that will be loaded, cast to the model's dtypes.
    for key, value in loadable.items():
        check_weight_value(key, value, path, expected[key].dtype)
    model.load_state_dict(loadable, strict=False)
    logger.info(f'DSNet: loaded {len(loadable)}/{len(expected)} tensors from {path}')
    if unbuilt:
        logger.info(
            f'DSNet: skipped {len(unbuilt)} tensors of stages not built for '
            f'out_indices={model.out_indices}'
        )
    if missing:
        logger.warning(
            f'DSNet: {len(missing)} tensors kept their initial values '
            f'(missing in the checkpoint): {_sample(missing, 20)}'
        )
