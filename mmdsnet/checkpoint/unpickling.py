"""What may be unpickled from a checkpoint file, and nothing more.

Two allow-lists, one per file kind:

* :func:`runner_checkpoint_globals` - the non-tensor types of mmengine
  Runner checkpoints, for ``torch.load(weights_only=True)``. Since torch 2.6
  ``weights_only`` is the default, and the ``MessageHub`` pickled into every
  Runner checkpoint (``HistoryBuffer`` objects holding numpy arrays, numpy
  scalars such as ``eta``/``best_score``) is refused without them.
* :class:`NumpyOnlyUnpickler` - PaddleClas ``.pdparams`` files, pickles of
  numpy arrays that ``torch.load`` does not read.
"""

import pickle
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
    plain: List[Any] = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    # Concrete dtype classes seen in Runner checkpoints: float64/int64 from
    # HistoryBuffer's log/count arrays and ``eta``; float32 from metrics kept
    # raw in runtime_info (e.g. mmseg IoUMetric -> CheckpointHook best_score).
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    if dtypes is not None:
        plain += [dtypes.Float64DType, dtypes.Int64DType, dtypes.Float32DType]
    aliases = []
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        for fn in (multiarray._reconstruct, multiarray.scalar):
            aliases.append((fn, f'{module}.{fn.__name__}'))
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
        return super().find_class(module, name)
