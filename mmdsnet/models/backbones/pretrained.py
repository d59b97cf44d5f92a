"""Load a DS-Net checkpoint into a ``DSNet`` and say exactly what loaded.

Fails loudly (``RuntimeError`` naming the likely cause) on a missing file,
shape mismatches (another arch) or when most of the backbone finds no
weights (a checkpoint of another model); partial loads are logged key by key.
"""
import os.path as osp

import torch.nn as nn

from ..utils.ckpt_convert import detect_layout, dsnet_convert, read_checkpoint

# Below this share of loaded backbone tensors the load is treated as wrong.
MIN_LOADED_FRACTION = 0.9


def _sample(keys, limit=5):
    keys = sorted(keys)
    more = f', ... ({len(keys)} in all)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def load_pretrained_dsnet(model: nn.Module, checkpoint_path: str, logger) -> None:
    """Convert and load ``checkpoint_path`` into ``model`` (a DSNet)."""
    path = str(checkpoint_path)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'DSNet pretrained checkpoint not found: {path}. Convert the public '
            'weights with tools/model_converters/dsnet2mmdet.py (README, "Pretrained '
            'weights") or set init_cfg=None to train from scratch.')
    try:
        raw = read_checkpoint(path)
    except Exception as err:  # corrupt file, refused unpickling, ...
        raise RuntimeError(f'Could not read DS-Net checkpoint {path}: {err}') from err
    state_dict = dsnet_convert(raw, logger=logger)
    expected = model.state_dict()
    layout = detect_layout(state_dict)

    mismatched = {k: (tuple(v.shape), tuple(expected[k].shape))
                  for k, v in state_dict.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)}
    if mismatched:
        key, (got, want) = next(iter(sorted(mismatched.items())))
        raise RuntimeError(
            f'{len(mismatched)} tensors of {path} do not fit this DSNet (e.g. {key}: '
            f'checkpoint {got} vs model {want}); the checkpoint is probably another '
            f'arch than {model.depths} / {model.embed_dims}.')

    loadable = {k: v for k, v in state_dict.items() if k in expected}
    missing = set(expected) - set(loadable)
    unexpected = set(state_dict) - set(expected)
    fraction = len(loadable) / max(1, len(expected))
    if fraction < MIN_LOADED_FRACTION:
        raise RuntimeError(
            f'Only {len(loadable)}/{len(expected)} DSNet tensors found weights in {path} '
            f'(layout after conversion: {layout!r}): it holds another DS-Net arch '
            f'(depths {model.depths} expected) or another model\'s weights. '
            f'Checkpoint keys: '
            f'{_sample(state_dict) or "none"}')

    # Keys of stages that are not built (out_indices stops early) are expected;
    # any other surplus key means the checkpoint has layers this model lacks.
    unbuilt = {k for k in unexpected
               if k.startswith(('stages.', 'patch_embeds.'))
               and int(k.split('.')[1]) >= model.num_built_stages}
    surplus = unexpected - unbuilt
    if surplus:
        raise RuntimeError(
            f'{len(surplus)} tensors of {path} have no place in this DSNet '
            f'(depths {model.depths}, with_alignment={model.with_alignment}): '
            f'{_sample(surplus)}; the checkpoint is another arch or variant.')
    model.load_state_dict(loadable, strict=False)
    logger.info(f'DSNet: loaded {len(loadable)}/{len(expected)} tensors from {path}')
    if unbuilt:
        logger.info(f'DSNet: skipped {len(unbuilt)} tensors of stages not built for '
                    f'out_indices={model.out_indices}')
    if missing:
        logger.warning(f'DSNet: {len(missing)} tensors kept their initial values '
                       f'(missing in the checkpoint): {_sample(missing, 20)}')
