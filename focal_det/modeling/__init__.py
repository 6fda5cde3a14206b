"""Model components; importing this registers FocalRetinaNet in META_ARCH_REGISTRY."""
from .retinanet import FocalRetinaNet, validate_retinanet_config

__all__ = ["FocalRetinaNet", "validate_retinanet_config"]
