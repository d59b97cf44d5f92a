"""What may be unpickled from a checkpoint file, and nothing more.

Two allow-lists, one per file kind:

* :func:`runner_checkpoint_globals` - the non-tensor types of mmengine
  Runner checkpoints, for ``torch.load(weights_only=True)``. Since torch 2.6
  ``weights_only`` is the default, and the ``MessageHub`` pickled into every
  Runner checkpoint (``HistoryBuffer`` objects holding numpy arrays, numpy
  scalars such as ``eta``/``best_score``) is refused without them.
* :class:`NumpyOnlyUnpickler` - PaddleClas ``.pdparams`` files, pickles of
  numpy arrays that ``torch.load`` does not read.

Both rebuild numpy arrays only as numpy's own pickles do (an empty array
filled from the pickled bytes, whose length numpy checks against the shape),
and :func:`check_numpy_arrays` then refuses, naming the key, arrays that are
not numeric or declare more elements than their bytes hold, and
``HistoryBuffer`` histories that are not what mmengine writes: a few bytes of
file cannot make the loader allocate gigabytes.
"""

import pickle
from collections.abc import Mapping
from typing import Any, List, Tuple

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

try:
    from numpy._core import multiarray  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray

# ---------------------------------------------------------------------------
# Runner checkpoints (torch.load weights-only)
# ---------------------------------------------------------------------------

#: ``HistoryBuffer.__getstate__`` pickles its statistics methods
#: (``HistoryBuffer.min`` ...). With pickle protocol 2 (torch.save's default)
#: a method is stored as ``getattr(HistoryBuffer, 'min')``, i.e. a call to
#: ``builtins.getattr``. Only these names are ever written by mmengine.
_HISTORY_BUFFER_METHODS = frozenset(('min', 'max', 'current', 'mean'))

#: The instance attributes a pickled ``HistoryBuffer`` has (``__getstate__``
#: adds ``statistics_methods``).
_HISTORY_BUFFER_STATE = frozenset(
    ('max_length', '_log_history', '_count_history', 'statistics_methods')
)


def _reconstruct_empty(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, allocating nothing a pickle declares.

    ``ndarray.__reduce__`` writes ``_reconstruct(ndarray, (0,), b'b')`` and
    fills the empty array in ``__setstate__``, which checks the stored bytes
    against the shape. numpy's ``_reconstruct`` given another shape allocates
    an uninitialised array of that size from a few bytes of file (2 GB from
    ``(250000000,)`` of float64). Here any other shape gets a read-only view
    of one element: ``__setstate__`` replaces it as usual, and left as it is
    :func:`check_numpy_arrays` refuses it, naming its key.
    """
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(
            f'numpy _reconstruct of {subtype!r} is refused: only numpy.ndarray is accepted'
        )
    if isinstance(shape, (tuple, list)) and list(shape) == [0]:
        return multiarray._reconstruct(np.ndarray, (0,), dtype)
    try:
        return np.broadcast_to(np.zeros(1, np.dtype(dtype)), shape)
    except (TypeError, ValueError) as err:
        raise pickle.UnpicklingError(
            f'numpy _reconstruct with shape {shape!r} and dtype {dtype!r} is refused: {err}'
        ) from err


def _buffer_bytes(array: np.ndarray) -> int:
    """Bytes of the memory under ``array`` (of the array that owns it)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    if array.base is None:
        return array.nbytes
    try:
        return memoryview(array.base).nbytes
    except TypeError:  # a buffer numpy knows but Python cannot measure
        return array.nbytes


#: dtype kinds of the arrays a checkpoint may hold: bool, integers, floats, complex.
_NUMERIC_KINDS = 'biufc'


def _array_problem(array: np.ndarray) -> str:
    """Why ``array`` is not a plain numeric array backed by its own bytes ('' if it is)."""
    if array.dtype.kind not in _NUMERIC_KINDS:
        return (
            f'is a numpy array of dtype {array.dtype}; numeric (bool, integer, float, '
            'complex) arrays are accepted'
        )
    if array.size == 0:
        return ''
    held = _buffer_bytes(array)
    if any(n > 1 and step == 0 for n, step in zip(array.shape, array.strides)) or (
        array.size * array.itemsize > held
    ):
        return (
            f'is a numpy array declaring {array.size} elements of shape {array.shape} (strides '
            f'{array.strides}) over {held} bytes: an expanded array; arrays whose values '
            'are all stored are accepted'
        )
    return ''


def _history_problem(buffer: HistoryBuffer) -> Tuple[str, str]:
    """(attribute, why) for a HistoryBuffer that mmengine would not have saved."""
    max_length = buffer.__dict__.get('max_length')
    if type(max_length) is not int or max_length < 1:
        return 'max_length', f'is {max_length!r}; a positive int is accepted'
    for name in ('_log_history', '_count_history'):
        history = buffer.__dict__.get(name)
        if not isinstance(history, np.ndarray):
            return name, f'is a {type(history).__name__}; a numpy array is accepted'
        if (
            history.ndim != 1
            or not history.flags.c_contiguous
            or history.dtype.kind not in 'biuf'
            or len(history) > max_length
        ):
            return name, (
                f'has shape {history.shape}, dtype {history.dtype}'
                f'{"" if history.flags.c_contiguous else ", not contiguous"}; a 1-D '
                f'contiguous numeric array of at most max_length={max_length} values '
                'is accepted'
            )
    return '', ''


def check_numpy_arrays(checkpoint: Any, source: str) -> None:
    """Refuse a loaded checkpoint whose numpy arrays are not plain numeric data.

    Walks dicts, lists, tuples and ``HistoryBuffer`` objects (the Runner's
    ``message_hub``, ``meta``, a ``.pdparams``'s arrays) without recursion;
    tensors are checked elsewhere
    (:func:`~mmdsnet.checkpoint.reading.check_tensor_layouts`). The error
    names ``source`` and the key path of the array. Nothing is copied: the
    arrays checked hold no more bytes than the file gave them.
    """
    pending = [('', checkpoint)]
    seen = set()
    while pending:
        key, value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            problem = _array_problem(value)
        elif isinstance(value, HistoryBuffer):
            attribute, problem = _history_problem(value)
            key = f'{key}.{attribute}'
        elif isinstance(value, Mapping):
            pending.extend((f'{key}.{k}' if key else str(k), v) for k, v in value.items())
            continue
        elif isinstance(value, (list, tuple)):
            pending.extend((f'{key}[{i}]', v) for i, v in enumerate(value))
            continue
        else:
            continue
        if problem:
            raise pickle.UnpicklingError(f'checkpoint {source} refused: {key!r} {problem}')


def _torch_version() -> Tuple[int, int]:
    """Return (major, minor) of the installed torch."""
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(''.join(ch for ch in minor if ch.isdigit()) or 0)


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Restricted stand-in for ``builtins.getattr`` during weights_only load.

    Registered under the name ``builtins.getattr`` so the unpickler can
    rebuild ``HistoryBuffer`` statistics methods, while any other use of
    ``getattr`` in a checkpoint (e.g. to reach ``os.system``) is refused.
    """
    if obj in (HistoryBuffer, _LoadedHistoryBuffer) and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'weights_only load: getattr({obj!r}, {name!r}) is not allowed; '
        'mmdsnet only permits HistoryBuffer statistics methods '
        f'{sorted(_HISTORY_BUFFER_METHODS)}.'
    )


class _LoadedHistoryBuffer(HistoryBuffer):
    """What the unpickler builds for a pickled ``HistoryBuffer``.

    mmengine's own ``__setstate__`` copies the pickled ``statistics_methods``
    into the dict shared by every ``HistoryBuffer`` of the process, so a
    checkpoint could make ``mean`` return the maximum for all later logging.
    Here the state may hold only the instance attributes mmengine writes and
    each statistics name must map to the method of the same name; the shared
    dict is not touched, and the object becomes a plain ``HistoryBuffer``.
    """

    def __setstate__(self, state: Any) -> None:
        cls = HistoryBuffer
        if not isinstance(state, dict) or not set(state) <= _HISTORY_BUFFER_STATE:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise pickle.UnpicklingError(
                f'weights_only load: a HistoryBuffer with state {keys} is not accepted; '
                f'only the attributes {sorted(_HISTORY_BUFFER_STATE)} are'
            )
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict) or any(
            getattr(cls, str(name), None) is not method for name, method in methods.items()
        ):
            raise pickle.UnpicklingError(
                'weights_only load: a HistoryBuffer whose statistics_methods map a name to '
                f'another method ({methods!r}) is refused; only '
                f"{{'min': HistoryBuffer.min, ...}} as mmengine saves them is accepted"
            )
        self.__class__ = cls
        self._set_default_statistics()  # the standard entries, as mmengine's own does
        self.__dict__.update({k: v for k, v in state.items() if k != 'statistics_methods'})


def _numpy_safe_globals() -> Tuple[List[Any], List[Tuple[Any, str]]]:
    """Numpy objects found in Runner checkpoints.

    Returns plain objects (matched by their own ``module.qualname``) and
    ``(object, name)`` aliases so checkpoints pickled under numpy 1.x
    (``numpy.core.multiarray``) and numpy 2.x (``numpy._core.multiarray``)
    both load with either numpy installed.
    """
    plain: List[Any] = [multiarray.scalar, np.ndarray, np.dtype]
    # Concrete dtype classes seen in Runner checkpoints: float64/int64 from
    # HistoryBuffer's log/count arrays and ``eta``; float32 from metrics kept
    # raw in runtime_info (e.g. mmseg IoUMetric -> CheckpointHook best_score).
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    if dtypes is not None:
        plain += [dtypes.Float64DType, dtypes.Int64DType, dtypes.Float32DType]
    aliases = []
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        aliases.append((multiarray.scalar, f'{module}.scalar'))
        aliases.append((_reconstruct_empty, f'{module}._reconstruct'))
    return plain, aliases


def runner_checkpoint_globals() -> List[Any]:
    """The non-tensor types of mmengine Runner checkpoints, for ``safe_globals``.

    ``HistoryBuffer``, numpy arrays, scalars and dtypes (under both numpy 1.x
    and 2.x module names) and a restricted ``getattr`` that only rebuilds
    ``HistoryBuffer`` statistics methods. Empty before torch 2.6, whose
    unpickler neither defaults to weights_only nor takes ``(obj, name)`` pairs.
    """
    if _torch_version() < (2, 6):
        return []
    plain, aliases = _numpy_safe_globals()
    # The pickled name of HistoryBuffer builds a _LoadedHistoryBuffer, which
    # checks the state and leaves the class-wide statistics table alone.
    buffer_alias = (_LoadedHistoryBuffer, f'{HistoryBuffer.__module__}.HistoryBuffer')
    return [buffer_alias] + plain + aliases + [(_history_buffer_getattr, 'builtins.getattr')]


# ---------------------------------------------------------------------------
# PaddleClas .pdparams (plain pickle of numpy arrays)
# ---------------------------------------------------------------------------

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


class NumpyOnlyUnpickler(pickle.Unpickler):
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
        if name == '_reconstruct':
            return _reconstruct_empty
        return super().find_class(module, name)
