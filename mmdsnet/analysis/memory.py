"""Activation memory that autograd keeps between forward and backward."""

from typing import Any, Tuple, Union

import torch
import torch.nn as nn


def saved_activations_mb(model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]]) -> float:
    """MB of tensors autograd keeps from one forward of ``model`` for its backward.

    Counted through saved-tensor hooks, once per storage, parameters and
    buffers excluded. Inside an activation-checkpointed block the checkpoint's
    own hooks drop the tensors and recompute them, so only what it really keeps
    (the block input) is seen: this is the memory ``with_cp`` is meant to cut,
    and unlike the process's resident set it does not depend on the allocator.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = storage.nbytes()
        # Handing back the tensor itself would tie a saved output to its own
        # grad_fn in a C++ reference cycle that no gc breaks (the whole graph
        # leaked on every call); a detached view keeps the storage, not the node.
        return tensor.detach()

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = model(*inputs)
    del outputs
    return sum(kept.values()) / 2**20
