"""The `Sam` model (`segment_anything/modeling/sam.py`) and its variant table."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..constants import PIXEL_MEAN, PIXEL_STD
from . import ops
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .plugins import PluginConfig
from .prompt_encoder import PromptEncoder


@dataclasses.dataclass(frozen=True)
class SamConfig:
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256

    @property
    def image_embedding_size(self) -> int:
        return self.img_size // self.patch_size


# Like `sam_model_registry`: the three released sizes and small ones for tests and the demo.
SAM_VARIANTS: dict[str, SamConfig] = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    # Test size: a 16x16 grid with 14x14 windows exercises window padding (16 -> 28).
    "vit_t": SamConfig(64, 2, 2, (1,), img_size=256),
    # Demo size: small encoder, the real decoder.
    "vit_demo": SamConfig(128, 4, 4, (1, 3), img_size=256, window_size=8),
}


def decode_prompts(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embeddings: jax.Array,
    point_coords: jax.Array | None = None,
    point_labels: jax.Array | None = None,
    boxes: jax.Array | None = None,
    mask_input: jax.Array | None = None,
    *,
    multimask_output: bool | None,
    return_intermediates: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The official prompt -> mask path: prompt encoder, then mask decoder.

    image_embeddings [1 or B, H, W, C]; point_coords [B, N, 2] and point_labels [B, N], boxes
    [B, 4], mask_input [B, 256, 256] logits, all in the model's input frame; each optional.
    Returns (low_res_logits [B, M, 256, 256], iou [B, M], intermediates), M as in
    `MaskDecoder.__call__`.
    """
    # point_labels comes with point_coords (the callers check).
    points = None if point_coords is None else (point_coords, cast(jax.Array, point_labels))
    sparse, dense = prompt_encoder(points, boxes, mask_input)
    return mask_decoder(
        image_embeddings,
        prompt_encoder.get_dense_pe(),
        sparse,
        dense,
        multimask_output,
        return_intermediates=return_intermediates,
    )


def decode_padded_prompts(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embeddings: jax.Array,
    point_coords: jax.Array,
    point_labels: jax.Array,
    boxes: jax.Array,
    box_valid: jax.Array,
    mask_input: jax.Array | None = None,
    mask_valid: jax.Array | None = None,
    *,
    multimask_output: bool | None,
    return_intermediates: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Fixed-shape prompt batches, so one compilation serves any mix of prompt types.

    point_coords [B, N, 2], point_labels [B, N] (`PAD_LABEL` marks an empty slot), boxes
    [B, 4] with box_valid [B], mask_input [B, 256, 256] with mask_valid [B]. Padded tokens
    are masked out of attention, so each row equals the official unpadded call on its own
    prompts. Returns what `decode_prompts` returns.
    """
    sparse, token_valid, dense = prompt_encoder.encode_padded(
        point_coords, point_labels, boxes, box_valid, mask_input, mask_valid
    )
    return mask_decoder(
        image_embeddings,
        prompt_encoder.get_dense_pe(),
        sparse,
        dense,
        multimask_output,
        token_valid=token_valid,
        return_intermediates=return_intermediates,
    )


class Sam(nnx.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        config: SamConfig,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        attention_impl: str = "reference",
        plugin_config: PluginConfig | None = None,
        model_type: str = "custom",
        scan_blocks: bool = False,
    ):
        self.config = config
        self.model_type = model_type
        self.plugin_config = plugin_config
        self.image_encoder = ImageEncoderViT(
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
        )
        grid = config.image_embedding_size
        self.prompt_encoder = PromptEncoder(
            rngs=rngs,
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder(
            rngs=rngs,
            transformer_dim=config.prompt_embed_dim,
            transformer_depth=config.decoder_depth,
            transformer_heads=config.decoder_heads,
            transformer_mlp_dim=config.decoder_mlp_dim,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
            dtype=dtype,
            plugins=plugin_config,
        )

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def preprocess(self, x: jax.Array) -> jax.Array:
        """[B, h, w, 3] pixels (long side = img_size) -> normalized, zero-padded [B, S, S, 3]."""
        x = (x.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
        h, w = x.shape[1:3]
        s = self.config.img_size
        return jnp.pad(x, ((0, 0), (0, s - h), (0, s - w), (0, 0)))

    def postprocess_masks(
        self,
        masks: jax.Array,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> jax.Array:
        """[..., 256, 256] low-res logits -> [..., H, W] logits at the original image size."""
        s = self.config.img_size
        masks = ops.resize_bilinear(masks, (s, s))
        masks = masks[..., : input_size[0], : input_size[1]]
        return ops.resize_bilinear(masks, cast(tuple[int, int], tuple(original_size)))

    def decode(
        self,
        image_embeddings: jax.Array,
        point_coords: jax.Array | None = None,
        point_labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_input: jax.Array | None = None,
        *,
        multimask_output: bool | None,
        return_intermediates: bool = False,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """`decode_prompts` with this model's prompt encoder and mask decoder."""
        return decode_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output=multimask_output,
            return_intermediates=return_intermediates,
        )

    def decode_padded(
        self,
        image_embeddings: jax.Array,
        point_coords: jax.Array,
        point_labels: jax.Array,
        boxes: jax.Array,
        box_valid: jax.Array,
        mask_input: jax.Array | None = None,
        mask_valid: jax.Array | None = None,
        *,
        multimask_output: bool | None,
        return_intermediates: bool = False,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """`decode_padded_prompts` with this model's prompt encoder and mask decoder."""
        return decode_padded_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            box_valid,
            mask_input,
            mask_valid,
            multimask_output=multimask_output,
            return_intermediates=return_intermediates,
        )

    def __call__(self, batched_input: list[dict[str, Any]], multimask_output: bool):
        """The official batched forward: a list of records with "image" [h, w, 3] (already
        resized to long side img_size), "original_size" and optional "point_coords",
        "point_labels", "boxes", "mask_inputs"."""
        images = jnp.concatenate([self.preprocess(r["image"][None]) for r in batched_input])
        embeddings = self.image_encoder(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            low_res, iou, _ = self.decode(
                embedding[None],
                record.get("point_coords"),
                record.get("point_labels"),
                record.get("boxes"),
                record.get("mask_inputs"),
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, record["image"].shape[:2], record["original_size"]
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs


def count_params(model: nnx.Module, filter_=nnx.Param) -> int:
    state = nnx.state(model, filter_)
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state)))
