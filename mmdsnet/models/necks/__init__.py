from .ds_fpn import DSFPN

__all__ = ['DSFPN']
