"""From a ``DSNet``'s ``init_cfg`` to weights on the model, saying exactly what loaded.

Every form of ``init_cfg`` that names a checkpoint (a ``Pretrained`` dict,
alone or in a list; a local path or an http(s) URL) takes one route,
:func:`load_pretrained_dsnet`, through :mod:`mmdsnet.checkpoint`:

1. read - the file (a URL downloaded once into torch hub's cache) is
   checked and loaded weights-only, its weights taken out of their container
   once, narrowed to ``prefix`` and their tensor layouts checked;
2. convert - public timm / PaddleClas keys become this package's (the
   classifier's final ``norm`` kept for ``final_norm=True``, else dropped);
3. fit - shapes, coverage of the backbone, surplus layers and finite values
   are checked against the model;
4. load - ``load_state_dict`` and a log of what loaded and what did not.

Each step fails loudly, naming the file and the likely cause.
"""

import contextlib
from typing import Dict, List, Optional, Set, Tuple, Union

import torch.nn as nn

from ...checkpoint import (
    CheckpointMismatchError,
    StateDictFit,
    check_all_tensors,
    check_tensor_layouts,
    detect_layout,
    download_checkpoint,
    dsnet_convert,
    is_url,
    naming_the_download,
    read_checkpoint,
    sample_keys,
    select_prefix,
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


def _read(checkpoint: str, prefix: Optional[str]) -> Tuple[str, dict]:
    """Step 1: (the local file read, its weights) with their tensor layouts checked."""
    url = is_url(checkpoint)
    path = download_checkpoint(checkpoint) if url else checkpoint
    try:
        with naming_the_download(checkpoint, path) if url else contextlib.nullcontext():
            state_dict = read_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f'DSNet pretrained checkpoint not found: {path}. Convert the public '
            'weights with tools/model_converters/dsnet2mmdet.py (README, "Pretrained '
            'weights") or set init_cfg=None to train from scratch.'
        ) from None
    except OSError:  # a directory: already says so
        raise
    except Exception as err:  # corrupt file, refused unpickling, ...
        raise RuntimeError(
            f'Could not read DS-Net checkpoint {path}: {type(err).__name__}: {err}'
        ) from err
    if prefix is not None:
        state_dict = select_prefix(state_dict, prefix, path)
    # Layouts before the conversion copies any value (memory stays bounded).
    check_tensor_layouts(state_dict, path)
    return path, state_dict


def _fit(model: nn.Module, state_dict: Dict[str, object], path: str) -> Tuple[StateDictFit, Set]:
    """Step 3: the converted weights against the model; (the fit, unbuilt-stage keys)."""
    check_all_tensors(state_dict, path)
    expected = model.state_dict()
    fit = StateDictFit(expected, state_dict)
    if fit.mismatched:
        raise CheckpointMismatchError(
            f'{len(fit.mismatched)} tensors of {path} do not fit this DSNet (e.g. '
            f'{fit.mismatch_lines()[0]}); the checkpoint is probably another '
            f'arch than {model.depths} / {model.embed_dims}.'
        )
    if len(fit.loadable) / max(1, len(expected)) < MIN_LOADED_FRACTION:
        raise CheckpointMismatchError(
            f'Only {len(fit.loadable)}/{len(expected)} DSNet tensors found weights in {path} '
            f'(layout after conversion: {detect_layout(state_dict)!r}): it holds another '
            f"DS-Net arch (depths {model.depths} expected) or another model's weights. "
            f'Checkpoint keys: {sample_keys(state_dict) or "none"}'
        )
    # Keys of stages that are not built (out_indices stops early) are expected;
    # any other surplus key means the checkpoint has layers this model lacks.
    unbuilt = {
        k
        for k in fit.unexpected
        if k.startswith(('stages.', 'patch_embeds.'))
        and int(k.split('.')[1]) >= model.num_built_stages
    }
    surplus = set(fit.unexpected) - unbuilt
    if surplus:
        raise CheckpointMismatchError(
            f'{len(surplus)} tensors of {path} have no place in this DSNet '
            f'(depths {model.depths}, with_alignment={model.with_alignment}): '
            f'{sample_keys(surplus)}; the checkpoint is another arch or variant.'
        )
    # Values last: only those that will be loaded, cast to the model's dtypes.
    fit.check_values(path)
    return fit, unbuilt


def load_pretrained_dsnet(
    model: nn.Module, checkpoint_path: str, logger, prefix: Optional[str] = None
) -> None:
    """Read, convert, fit and load ``checkpoint_path`` into ``model`` (a DSNet).

    ``prefix`` keeps only the keys that start with it (stripped), as
    mmengine's ``Pretrained`` init does. An http(s) URL is downloaded once
    into torch hub's cache and then read like a local file (weights-only).
    """
    path, weights = _read(str(checkpoint_path), prefix)
    # The public final norm loads into final_norm's ``norm``, else is dropped.
    state_dict = dsnet_convert(weights, logger=logger, with_norm=model.final_norm)
    fit, unbuilt = _fit(model, state_dict, path)
    model.load_state_dict(fit.loadable, strict=False)
    logger.info(f'DSNet: loaded {len(fit.loadable)}/{len(fit.model_state)} tensors from {path}')
    if unbuilt:
        logger.info(
            f'DSNet: skipped {len(unbuilt)} tensors of stages not built for '
            f'out_indices={model.out_indices}'
        )
    if fit.missing:
        logger.warning(
            f'DSNet: {len(fit.missing)} tensors kept their initial values '
            f'(missing in the checkpoint): {sample_keys(fit.missing, 20)}'
        )
