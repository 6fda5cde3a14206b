"""Model components; importing this registers FocalRetinaNet in META_ARCH_REGISTRY."""
from ..config import validate_retinanet_config
from .retinanet import FocalRetinaNet

__all__ = ["FocalRetinaNet", "validate_retinanet_config"]
