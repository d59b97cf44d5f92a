"""Read DS-Net checkpoints in the public layouts and convert them to ours.

Public layouts (``docs/architecture.md``, "Checkpoint layout"):

* timm / PyTorch (SteveTsui/DS-Net): ``patch_embed{k}.proj.*``, ``blocks{k}.{i}.*``,
  ``norm.*``, ``head.*``, often wrapped in ``{'model': ..., 'model_ema': ...}``;
* PaddleClas ``.pdparams``: same names, BN buffers ``_mean`` / ``_variance``
  without ``num_batches_tracked``, and Linear weights stored (in, out).

Ours: ``patch_embeds.{k-1}.*`` and ``stages.{k-1}.{i}.*`` with the per-block
names unchanged. The classification ``norm`` and ``head`` are dropped.
"""

import os
import pickle
import re
from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import numpy as np
import torch

from ...utils.compat import check_checkpoint_file, check_is_mapping, torch_load_weights_only

# Containers in which checkpoints keep their weights, in order of preference.
WRAPPER_KEYS = ('state_dict', 'model', 'model_ema')
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

# The only globals a .pdparams pickle of numpy arrays needs.
_PDPARAMS_GLOBALS = {
    ('collections', 'OrderedDict'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
}


def _latin1_bytes(text, encoding):
    """Stand-in for ``_codecs.encode`` in protocol-2 pickles.

    Protocol 2 (Paddle 2.0's ``paddle.save(..., protocol=2)`` and
    ``save_dygraph``) stores bytes, such as numpy array buffers, as
    ``_codecs.encode(text, 'latin1')``. Only that exact use is allowed.
    """
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(
            f'refusing _codecs.encode({type(text).__name__}, {encoding!r}) in a .pdparams '
            "file: only the protocol-2 form _codecs.encode(str, 'latin1') is accepted"
        )
    return text.encode('latin1')


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction
    (and the latin-1 bytes helper of pickle protocol 2)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ('_codecs', 'encode'):
            return _latin1_bytes
        if (module, name) not in _PDPARAMS_GLOBALS:
            raise pickle.UnpicklingError(
                f'refusing to load {module}.{name} from a .pdparams file: only '
                'numpy arrays are accepted (no arbitrary code is unpickled)'
            )
        return super().find_class(module, name)


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint file without arbitrary unpickling.

    ``.pdparams`` files (pickle protocols 2 to 5) go through a numpy-only
    unpickler; anything else through ``torch.load(weights_only=True)``, with
    the types of mmengine Runner checkpoints allowed for this load (a
    detector trained here can seed a backbone).
    """
    check_checkpoint_file(path)
    if str(path).endswith('.pdparams'):
        with open(path, 'rb') as f:
            checkpoint = _NumpyOnlyUnpickler(f).load()
        check_is_mapping(checkpoint, path)
        return checkpoint
    return torch_load_weights_only(path, map_location='cpu')


def check_tensor_layout(key: str, value: torch.Tensor, source: str) -> None:
    """A checkpoint tensor must be dense, strided, hold values and fit its storage.

    Runs before any value is read: a few bytes of file can declare an
    expanded (stride-0) tensor of billions of elements, which every
    elementwise check or copy would materialise.
    """
    accepted = 'only dense (strided) tensors with their values stored are accepted'
    if value.layout != torch.strided or value.is_nested:
        raise ValueError(f'{source}: tensor {key!r} has layout {value.layout}; {accepted}')
    if value.is_meta:
        raise ValueError(f'{source}: tensor {key!r} is a meta tensor (no values); {accepted}')
    if value.is_quantized:
        raise ValueError(
            f'{source}: tensor {key!r} is quantized ({value.dtype}); {accepted} '
            '(float weights; dequantize it first)'
        )
    needed = value.numel() * value.element_size()
    stored = value.untyped_storage().nbytes()
    if needed > stored:
        raise ValueError(
            f'{source}: tensor {key!r} declares {value.numel()} elements of shape '
            f'{tuple(value.shape)} but its storage holds {stored // max(1, value.element_size())} '
            f'(stride {value.stride()}): an expanded or overlapping tensor; {accepted}'
        )


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return 'bool'
    if dtype.is_complex:
        return 'complex'
    return 'floating' if dtype.is_floating_point else 'integer'


def check_weight_value(
    key: str, value: torch.Tensor, source: str, target_dtype: torch.dtype = None
) -> None:
    """The tensor converts to ``target_dtype`` (its kind must match) and is finite after.

    A NaN or Inf weight makes every output NaN without any error; float64
    values beyond float32's range only become Inf in the cast, so the check
    is made on the cast values. Integers and bools are not silently turned
    into float weights, nor complex numbers into real ones. Without a
    target, floating and integer tensors are accepted.
    """
    kind = _dtype_kind(value.dtype)
    if target_dtype is None:
        target_dtype = value.dtype
        if kind not in ('floating', 'integer'):
            raise ValueError(
                f'{source}: tensor {key!r} is {value.dtype}; floating (weights) or integer '
                '(counters) tensors are accepted'
            )
    want = _dtype_kind(target_dtype)
    if kind != want:
        raise ValueError(
            f'{source}: tensor {key!r} is {value.dtype}, which does not convert to the '
            f"model's {target_dtype}; a {want} tensor is accepted there"
        )
    if want not in ('floating', 'complex'):
        return
    cast = value.to(target_dtype)
    if not bool(torch.isfinite(cast).all()):
        bad = 'NaN' if bool(torch.isnan(cast).any()) else 'Inf'
        after = f' after conversion to {target_dtype}' if value.dtype != target_dtype else ''
        raise ValueError(
            f'{source}: weight {key!r} {tuple(value.shape)} holds {bad} values{after}; '
            'refusing a corrupt (or diverged) checkpoint: finite weights are accepted'
        )


def check_tensors(state_dict: Mapping[str, object], source: str) -> None:
    """Every value must be a dense tensor (see :func:`check_tensor_layout`).

    Values are not read here; :func:`check_weight_value` does that once the
    keys and shapes are known to fit.
    """
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f'{source}: value of {key!r} is a {type(value).__name__}, not a '
                'tensor; this is not a weights file (or not only one)'
            )
        check_tensor_layout(key, value, source)


def unwrap_state_dict(checkpoint: Mapping) -> Tuple[Dict[str, object], str]:
    """Return the weights of a checkpoint and the container key they came from."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key]), key
    return dict(checkpoint), ''


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


def dsnet_convert(checkpoint: Mapping, logger=None) -> 'OrderedDict[str, torch.Tensor]':
    """Convert any DS-Net checkpoint (file contents) to this package's layout.

    Accepts a bare state dict or one under ``state_dict``/``model``/
    ``model_ema``; strips ``module.`` and ``backbone.``; maps the timm and
    PaddleClas layouts; drops the classification ``norm``/``head``. Weights
    already in our layout pass through. Unknown layouts pass through too, so
    the loader can report what did not match.
    """
    state_dict, container = unwrap_state_dict(checkpoint)
    state_dict = _strip_prefixes(state_dict)
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
        where = f" (under '{container}')" if container else ''
        logger.info(
            f'DS-Net checkpoint layout: {layout}{where}; {len(converted)} tensors '
            f'kept, {len(dropped)} classification-only tensors dropped'
            + (f': {", ".join(dropped)}' if dropped else '')
        )
    return converted


def convert_file(src: str, dst: str, logger=None) -> Dict[str, torch.Tensor]:
    """Read ``src`` in any supported layout and save ours to ``dst``.

    Refuses a file that is not a DS-Net checkpoint (no public or mmdsnet
    keys) and one with non-tensor or non-finite values; ``dst`` is written
    atomically (a temporary file renamed into place).
    """
    state_dict, _ = unwrap_state_dict(read_checkpoint(src))
    layout = detect_layout(_strip_prefixes(state_dict))
    if layout == 'unknown':
        raise ValueError(
            f'{src} is not a DS-Net checkpoint: none of its {len(state_dict)} keys has '
            "the public layout ('patch_embed1.', 'blocks1.', ...) or mmdsnet's "
            f"('patch_embeds.', 'stages.'); keys: {', '.join(sorted(state_dict)[:5])}"
        )
    check_tensors({k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}, src)
    converted = dsnet_convert(state_dict, logger=logger)
    check_tensors(converted, src)
    for key, value in converted.items():
        check_weight_value(key, value, src)
    tmp = f'{dst}.tmp'
    torch.save(converted, tmp)
    os.replace(tmp, dst)
    return converted


__all__ = [
    'dsnet_convert',
    'read_checkpoint',
    'unwrap_state_dict',
    'detect_layout',
    'convert_file',
    'check_checkpoint_file',
    'check_tensors',
    'check_tensor_layout',
    'check_weight_value',
]
