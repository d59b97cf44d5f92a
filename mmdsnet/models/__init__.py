from .backbones import DSNet

__all__ = ['DSNet']
