"""The converter's route (``tools/model_converters/dsnet2mmdet.py``): a public
DS-Net checkpoint file rewritten in this package's layout, read, converted,
checked and written by the modules beside this one."""

from typing import Dict

import torch

from .conversion import dsnet_convert, require_dsnet_layout
from .fitting import check_all_tensors, check_weight_value
from .reading import check_tensor_layouts, read_checkpoint
from .writing import write_atomically


def convert_file(src: str, dst: str, logger=None) -> Dict[str, torch.Tensor]:
    """Read ``src`` in any supported layout and save ours to ``dst``.

    Refuses a file that is not a DS-Net checkpoint (no public or mmdsnet
    keys) and one with non-tensor or non-finite values; ``dst`` is written
    atomically (a temporary file renamed into place), or not at all.
    """
    state_dict = read_checkpoint(src)
    require_dsnet_layout(state_dict, src)
    check_tensor_layouts(state_dict, src)
    converted = dsnet_convert(state_dict, logger=logger)
    check_all_tensors(converted, src)
    for key, value in converted.items():
        check_weight_value(key, value, src)
    write_atomically(dst, lambda partial: torch.save(converted, partial))
    return converted
