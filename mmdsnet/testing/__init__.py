"""Helpers for tests, benchmarks and the demo (not needed to train or test models)."""

from .reference_dsnet import ReferenceDSNet, explicit_attention

__all__ = ['ReferenceDSNet', 'explicit_attention', 'reference_for', 'randomize_norm_stats']


def reference_for(arch='small', **kwargs) -> ReferenceDSNet:
    """A public-layout reference model with the settings of a DSNet arch."""
    from mmdsnet.models import DSNet

    settings = DSNet.parse_arch(arch)
    return ReferenceDSNet(
        embed_dims=settings['embed_dims'],
        depths=settings['depths'],
        num_heads=settings['num_heads'],
        mlp_ratio=settings.get('mlp_ratio', 4.0),
        **kwargs,
    )


def randomize_norm_stats(model, seed=0) -> None:
    """Give every BN non-trivial affine parameters and running statistics,
    so weight-mapping mistakes show up in the outputs."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.num_batches_tracked.fill_(7)
        elif isinstance(module, torch.nn.LayerNorm):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
