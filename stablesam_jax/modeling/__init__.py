from .common import Buffer, PluginParam
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .mask_decoder_hq import MaskDecoderHQ
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
from .tiny_vit import TinyViT, TinyViTConfig
from .transformer import TwoWayTransformer

__all__ = [
    "Buffer",
    "PluginParam",
    "ImageEncoderViT",
    "MaskDecoder",
    "MaskDecoderHQ",
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
    "TinyViT",
    "TinyViTConfig",
    "TwoWayTransformer",
]
