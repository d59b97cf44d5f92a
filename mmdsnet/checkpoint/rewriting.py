"""The converter's route (``tools/model_converters/dsnet2mmdet.py``): a public
DS-Net checkpoint file rewritten in this package's layout, read, converted,
checked and written by the modules beside this one."""

from typing import Dict

import torch

from .conversion import dsnet_classifier_convert, dsnet_convert, require_dsnet_layout
from .fitting import check_all_tensors, check_weight_value
from .reading import check_tensor_layouts, read_checkpoint
from .writing import write_atomically


def convert_file(
    src: str, dst: str, logger=None, classifier: bool = False
) -> Dict[str, torch.Tensor]:
    """Read ``src`` in any supported layout and save ours to ``dst``.

    By default the backbone alone, as a plain state dict for
    ``DSNet(init_cfg=dict(type='Pretrained', ...))``. With ``classifier``,
    the whole public classifier as an mmpretrain ``ImageClassifier``
    checkpoint (``{'state_dict': {backbone.*, head.fc.*}}``, see
    :func:`~mmdsnet.checkpoint.conversion.dsnet_classifier_convert`), which
    mmpretrain's ``load_from``, ``tools/test.py`` and inferencers load and
    ``DSNet``'s ``Pretrained`` init still reads as a backbone.

    Refuses a file that is not a DS-Net checkpoint (no public or mmdsnet
    keys), one with non-tensor or non-finite values, and for ``classifier``
    one without a head; ``dst`` is written atomically (a temporary file
    renamed into place), or not at all.
    """
    state_dict = read_checkpoint(src)
    require_dsnet_layout(state_dict, src)
    check_tensor_layouts(state_dict, src)
    if classifier:
        converted = dsnet_classifier_convert(state_dict, source=src, logger=logger)
        saved = {'state_dict': converted}
    else:
        converted = saved = dsnet_convert(state_dict, logger=logger)
    check_all_tensors(converted, src)
    for key, value in converted.items():
        check_weight_value(key, value, src)
    write_atomically(dst, lambda partial: torch.save(saved, partial))
    return converted
