"""Read a checkpoint file without running code from it, and refuse what is not one.

* :func:`check_checkpoint_file` - the one check that a path is a readable,
  non-empty checkpoint file (not found, a directory, a FIFO, text...);
* :func:`read_checkpoint` - the weights of a local file, unwrapped once
  (:func:`unwrap_state_dict`): ``.pdparams`` through a numpy-only unpickler,
  anything else through :func:`torch_load_weights_only`;
* :func:`select_prefix` - the weights under a prefix (``init_cfg``'s
  ``Pretrained`` ``prefix``, as mmengine's ``PretrainedInit`` takes it);
* :func:`check_tensor_layouts` - tensors that are dense and fit their
  storage, checked before any value is read or copied;
* :func:`sample_keys` - a few keys for error messages.

Everything after :func:`read_checkpoint` takes the state dict it returns:
the route reads, then narrows, checks, converts and fits, and never unwraps again.
"""

import contextlib
import os
import os.path as osp
import pickle
import stat
import zipfile
from typing import Any, Dict, Iterable, Mapping, Tuple

import torch

from .unpickling import NumpyOnlyUnpickler, check_numpy_arrays, runner_checkpoint_globals

#: First bytes of what torch.load and the .pdparams reader accept: a zip
#: archive (torch.save since 1.6) or a pickle of protocol 2 or later.
_CHECKPOINT_MAGIC = (b'PK\x03\x04', b'\x80')
# Containers in which checkpoints keep their weights, in order of preference.
WRAPPER_KEYS = ('state_dict', 'model', 'model_ema')


def sample_keys(keys: Iterable[str], limit: int = 5) -> str:
    """The first ``limit`` keys in sorted order, and how many there are in all."""
    keys = sorted(keys)
    more = f', ... ({len(keys)} in all)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def unwrap_state_dict(checkpoint: Mapping) -> Tuple[Dict[str, object], str]:
    """Return the weights of a checkpoint and the container key they came from."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key]), key
    return dict(checkpoint), ''


def check_checkpoint_file(path: str) -> None:
    """Refuse a path that is not a readable, non-empty checkpoint file, saying which.

    Runs before anything is read, so a FIFO or a device such as ``/dev/zero``
    is named as such instead of blocking or filling memory, and a text file
    is refused instead of failing deep inside the unpickler.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint not found: {path}') from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(
            f'{path} is a directory; a checkpoint file (.pth or .pdparams) is expected'
        )
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f'{path} is not a regular file (a FIFO, device or socket); a checkpoint file '
            '(.pth or .pdparams) is expected'
        )
    if info.st_size == 0:
        raise RuntimeError(
            f'checkpoint {path} is empty (0 bytes): an interrupted '
            'download or save? Fetch or convert it again.'
        )
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head.startswith(_CHECKPOINT_MAGIC):
        raise ValueError(
            f'{path} is not a checkpoint: it starts with {head!r}, not with a zip archive '
            '(torch.save) or a pickle (.pdparams, legacy torch.save). A text or HTML file?'
        )


def check_is_mapping(checkpoint: Any, path: str) -> None:
    """Refuse checkpoint contents that are not a dict, naming the file."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f'checkpoint {path} holds a {type(checkpoint).__name__}, not a dict; a state '
            "dict or a Runner checkpoint ({'state_dict': ..., 'meta': ...}) is expected"
        )


def torch_load_weights_only(path: str, map_location=None) -> Mapping:
    """``torch.load(weights_only=True)`` of a local file with the Runner types allowed.

    The file is checked first (:func:`check_checkpoint_file`); a refused or
    unreadable file gets an error that names it, and so does a file whose
    content is not a dict (the only form mmengine and our loaders use).
    """
    check_checkpoint_file(path)
    allowed = runner_checkpoint_globals()
    scope = torch.serialization.safe_globals(allowed) if allowed else contextlib.nullcontext()
    try:
        with scope:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f'checkpoint {path} refused: {err}') from err
    except (RuntimeError, EOFError) as err:
        if not zipfile.is_zipfile(path):
            raise RuntimeError(
                f'checkpoint {path} is incomplete or not a torch checkpoint '
                f'({osp.getsize(path)} bytes, no zip directory; an interrupted save?): '
                f'{err}'
            ) from err
        raise RuntimeError(f'checkpoint {path} could not be read: {err}') from err
    except Exception as err:  # KeyError, IndexError, ValueError from torch internals
        raise RuntimeError(
            f'checkpoint {path} could not be read ({type(err).__name__}: {err}); a file '
            'written by torch.save (a Runner checkpoint or a state dict) is expected'
        ) from err
    check_is_mapping(checkpoint, path)
    check_numpy_arrays(checkpoint, path)
    return checkpoint


def read_checkpoint(path: str) -> Dict[str, object]:
    """The weights of a local checkpoint file, read without arbitrary unpickling.

    ``.pdparams`` files (pickle protocols 2 to 5) go through a numpy-only
    unpickler; anything else through ``torch.load(weights_only=True)``, with
    the types of mmengine Runner checkpoints allowed for this load (a
    detector trained here can seed a backbone). The weights are taken out of
    their container (``state_dict``, ``model`` or ``model_ema``) here, once.
    """
    if str(path).endswith('.pdparams'):
        check_checkpoint_file(path)
        with open(path, 'rb') as f:
            try:
                checkpoint = NumpyOnlyUnpickler(f).load()
            except pickle.UnpicklingError as err:
                raise pickle.UnpicklingError(f'checkpoint {path} refused: {err}') from err
            except Exception as err:  # numpy's ValueError, a cut file's EOFError...
                raise RuntimeError(
                    f'checkpoint {path} could not be read ({type(err).__name__}: {err}); '
                    'a .pdparams of numpy arrays (paddle.save) is expected'
                ) from err
        check_is_mapping(checkpoint, path)
        check_numpy_arrays(checkpoint, path)
    else:
        checkpoint = torch_load_weights_only(path, map_location='cpu')
    return unwrap_state_dict(checkpoint)[0]


def is_url(path: Any) -> bool:
    """Whether ``path`` is an http(s) URL."""
    return isinstance(path, str) and path.startswith(('http://', 'https://'))


def select_prefix(state_dict: Mapping[str, object], prefix: str, path: str) -> dict:
    """The weights whose key starts with ``prefix``, with the prefix removed."""
    selected = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not selected:
        raise RuntimeError(
            f'No key of {path} starts with prefix {prefix!r} (init_cfg '
            f'Pretrained prefix); keys: {sample_keys(state_dict) or "none"}'
        )
    return selected


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


def check_tensor_layouts(state_dict: Mapping[str, object], source: str) -> None:
    """:func:`check_tensor_layout` of every tensor of a state dict.

    Other values (numpy arrays of a ``.pdparams``, Paddle's name table) are
    left to the conversion, which drops or converts them.
    """
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            check_tensor_layout(key, value, source)
