"""Networks: feature trunks and per-task heads."""

from .heads import MultiHead
from .trunks import Trunk, atari_trunk, cifar_trunk, digits_trunk, single_pass_trunk

__all__ = ["MultiHead", "Trunk", "atari_trunk", "cifar_trunk", "digits_trunk", "single_pass_trunk"]
