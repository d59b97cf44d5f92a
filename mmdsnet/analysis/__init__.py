from .attention_backends import (
    ATTENTIONS,
    FUSED_BACKENDS,
    attention_shapes,
    backend_of_call,
    describe_sdpa_calls,
    eligible_backends,
)
from .attention_maps import (
    AttentionRecorder,
    AttentionTargets,
    BackboneAttention,
    BlockAttention,
    TargetNames,
    attention_probs,
    attention_targets,
    record_attention_targets,
    record_backbone_attention,
    record_block_attention,
)
from .flops import commuted_conv_macs, count_flops, count_spec_flops, parameter_count, sdpa_flop_jit
from .memory import saved_activations_mb

__all__ = [
    # attention maps recorded by hooks (attention_maps.py)
    'AttentionRecorder',
    'AttentionTargets',
    'BackboneAttention',
    'BlockAttention',
    'TargetNames',
    'attention_probs',
    'attention_targets',
    'record_attention_targets',
    'record_backbone_attention',
    'record_block_attention',
    # the SDPA backends of the attention calls and their shapes (attention_backends.py)
    'ATTENTIONS',
    'FUSED_BACKENDS',
    'attention_shapes',
    'backend_of_call',
    'describe_sdpa_calls',
    'eligible_backends',
    # FLOPs and memory
    'commuted_conv_macs',
    'count_flops',
    'count_spec_flops',
    'parameter_count',
    'saved_activations_mb',
    'sdpa_flop_jit',
]
