from .common import Buffer, PluginParam
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .plugins import DeformableSamplingPlugin, DynamicRoutingPlugin, PluginConfig
from .prompt_encoder import PromptEncoder
from .sam import (
    SAM_VARIANTS,
    Sam,
    SamConfig,
    count_params,
    decode_padded_prompts,
    decode_prompts,
)
from .transformer import TwoWayTransformer

__all__ = [
    "Buffer",
    "PluginParam",
    "ImageEncoderViT",
    "MaskDecoder",
    "DeformableSamplingPlugin",
    "DynamicRoutingPlugin",
    "PluginConfig",
    "PromptEncoder",
    "SAM_VARIANTS",
    "Sam",
    "SamConfig",
    "count_params",
    "decode_padded_prompts",
    "decode_prompts",
    "TwoWayTransformer",
]
