"""The image encoder a `SamConfig` asks for: SAM's ViT, or TinyViT (MobileSAM)."""

from __future__ import annotations

from flax import nnx

from .image_encoder import ImageEncoderViT
from .tiny_vit import TinyViT


def make_image_encoder(
    config, rngs: nnx.Rngs, dtype, attention_impl: str, scan_blocks: bool
) -> ImageEncoderViT | TinyViT:
    """With `config.hq` the encoder appends HQ-SAM's early features to its output's channels.
    attention_impl and scan_blocks concern the ViT only (TinyViT has one attention path)."""
    if config.tiny_vit is not None:
        return TinyViT(
            config.tiny_vit,
            rngs=rngs,
            img_size=config.img_size,
            out_chans=config.prompt_embed_dim,
            hq_features=config.hq,
            dtype=dtype,
        )
    return ImageEncoderViT(
        rngs=rngs,
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        out_chans=config.prompt_embed_dim,
        window_size=config.window_size,
        global_attn_indexes=config.encoder_global_attn_indexes,
        dtype=dtype,
        attention_impl=attention_impl,
        scan_blocks=scan_blocks,
        # HQ-SAM reads the first global-attention block's output.
        early_block=config.encoder_global_attn_indexes[0] if config.hq else None,
    )
