"""Checkpoint files: reading them safely, converting their keys, checking that
they fit a model, and writing them atomically. One module per step:

* :mod:`.reading` - file checks, weights-only loading (with
  :mod:`.unpickling`'s allow-lists), ``.pdparams``, the weights taken out of
  their container once, prefixes, tensor layouts;
* :mod:`.downloading` - http(s) checkpoints, each URL downloaded once, whole
  and verified, into torch hub's cache;
* :mod:`.conversion` - the public timm / PaddleClas layouts mapped to this
  package's keys (no I/O);
* :mod:`.fitting` - a state dict compared with a model (missing, unexpected,
  shapes, dtypes, finite values);
* :mod:`.writing` - atomic writes and the clean-up of interrupted ones;
* :mod:`.rewriting` - the converter CLI's route through the four.

The route runs one way: ``reading`` imports none of the other steps, and
each later step takes the state dict that ``reading`` returns.

It imports neither ``mmdsnet.models`` nor ``mmdsnet.engine``; both use it.
"""

from .conversion import LINEAR_LAYERS, detect_layout, dsnet_classifier_convert, dsnet_convert
from .downloading import download_checkpoint, naming_the_download, url_cache_path
from .fitting import CheckpointMismatchError, StateDictFit, check_all_tensors, check_weight_value
from .reading import (
    check_checkpoint_file,
    check_tensor_layouts,
    is_url,
    read_checkpoint,
    sample_keys,
    select_prefix,
    torch_load_weights_only,
    unwrap_state_dict,
)
from .rewriting import convert_file
from .unpickling import runner_checkpoint_globals
from .writing import (
    PARTIAL_SUFFIX,
    CheckpointSaveError,
    remove_interrupted_saves,
    write_atomically,
    write_text_atomically,
)

__all__ = [
    'LINEAR_LAYERS',
    'PARTIAL_SUFFIX',
    'CheckpointMismatchError',
    'CheckpointSaveError',
    'StateDictFit',
    'check_all_tensors',
    'check_checkpoint_file',
    'check_tensor_layouts',
    'check_weight_value',
    'convert_file',
    'detect_layout',
    'download_checkpoint',
    'dsnet_classifier_convert',
    'dsnet_convert',
    'is_url',
    'naming_the_download',
    'read_checkpoint',
    'remove_interrupted_saves',
    'runner_checkpoint_globals',
    'sample_keys',
    'select_prefix',
    'torch_load_weights_only',
    'unwrap_state_dict',
    'url_cache_path',
    'write_atomically',
    'write_text_atomically',
]
