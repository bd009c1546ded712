"""The tests' torchvision stand-in: the official `segment_anything` imports torchvision at package
import, only for a PIL resize and batched NMS (see `stablesam_jax.official`)."""

from stablesam_jax.tools.official import install_torchvision_stand_in as install

__all__ = ["install"]
