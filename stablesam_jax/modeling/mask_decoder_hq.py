"""HQ-SAM's mask decoder (`segment_anything_hq/modeling/mask_decoder_hq.py`) in Flax NNX, NHWC.

SAM's decoder plus an HQ output token (`hf_token`) with its own hypernetwork MLP (`hf_mlp`), whose
mask is read from HQ features: `embedding_encoder(image embedding) + compress_vit_feat(early
encoder features)` added to `embedding_maskfeature(SAM's upscaled features)`. The early features
travel in the image embedding's channels after SAM's `transformer_dim` (the encoder appends
them), so every path that carries an image embedding carries them too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .common import Activation, Conv, ConvTranspose2x2, Embedding, LayerNorm2d, gelu, precision_for
from .mask_decoder import MLP, MaskDecoder
from .plugins import PluginConfig

# HQ-SAM's own modules: what its official builder leaves trainable, and what a plain SAM
# checkpoint does not hold.
HQ_MODULES = (
    "hf_token",
    "hf_mlp",
    "compress_vit_feat",
    "embedding_encoder",
    "embedding_maskfeature",
)


def is_hq_path(path) -> bool:
    """True for a variable path (`nnx.iter_graph` / filter form) inside HQ-SAM's own modules."""
    return len(path) > 1 and path[0] == "mask_decoder" and path[1] in HQ_MODULES


def _run(layers, x: jax.Array) -> jax.Array:
    for layer in layers:
        x = layer(x)
    return x


class MaskDecoderHQ(MaskDecoder):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        vit_dim: int,
        transformer_dim: int = 256,
        dtype=None,
        plugins: PluginConfig | None = None,
        **kwargs,
    ):
        """vit_dim: width of the early encoder features (the ViT's width; TinyViT's stage 3)."""
        super().__init__(
            rngs=rngs, transformer_dim=transformer_dim, dtype=dtype, plugins=plugins, **kwargs
        )
        d = transformer_dim
        self.vit_dim = vit_dim
        self.hf_token = Embedding(1, d, rngs=rngs)
        self.hf_mlp = MLP(d, d, d // 8, 3, rngs=rngs, dtype=dtype)
        self.compress_vit_feat = nnx.List(
            [
                ConvTranspose2x2(vit_dim, d, rngs=rngs, dtype=dtype),
                LayerNorm2d(d),
                Activation(gelu),
                ConvTranspose2x2(d, d // 8, rngs=rngs, dtype=dtype),
            ]
        )
        self.embedding_encoder = nnx.List(
            [
                ConvTranspose2x2(d, d // 4, rngs=rngs, dtype=dtype),
                LayerNorm2d(d // 4),
                Activation(gelu),
                ConvTranspose2x2(d // 4, d // 8, rngs=rngs, dtype=dtype),
            ]
        )
        self.embedding_maskfeature = nnx.List(
            [
                Conv(d // 8, d // 4, 3, padding=1, rngs=rngs, dtype=dtype),
                LayerNorm2d(d // 4),
                Activation(gelu),
                Conv(d // 4, d // 8, 3, padding=1, rngs=rngs, dtype=dtype),
            ]
        )

    @property
    def num_output_tokens(self) -> int:
        """SAM's output tokens and the HQ token after them."""
        return super().num_output_tokens + 1

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool | None,
        token_valid: jax.Array | None = None,
        return_intermediates: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """As `MaskDecoder.__call__`, image_embeddings [1 or B, H, W, C + vit_dim] (SAM's
        embedding, then the early encoder features). One mask per prompt, as the official HQ
        decoder: SAM's mask 0 (`multimask_output=False`) or SAM's best of masks 1-3 by predicted
        IoU (True), plus the HQ mask; the HQ mask alone with `hq_token_only`. The IoU is SAM's
        (of the chosen mask). None (export, training): all masks [B, 5, 4H, 4W] (SAM's 4, then
        the HQ mask) and SAM's 4 IoUs."""
        masks, iou_pred, intermediates = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            token_valid,
            return_intermediates,
        )
        if multimask_output is None:
            return masks, iou_pred, intermediates
        masks_hq = masks[:, -1:]
        if multimask_output:
            best = jnp.argmax(iou_pred[:, 1:], axis=1)  # first of equal maxima, as torch.max
            iou_pred = jnp.take_along_axis(iou_pred[:, 1:], best[:, None], axis=1)
            masks_sam = jnp.take_along_axis(masks[:, 1:-1], best[:, None, None, None], axis=1)
        else:
            iou_pred, masks_sam = iou_pred[:, :1], masks[:, :1]
        return (masks_hq if hq_token_only else masks_sam + masks_hq), iou_pred, intermediates

    def hq_features(self, image_embeddings: jax.Array, early: jax.Array) -> jax.Array:
        """[n, H, W, C], [n, H, W, vit_dim] -> [n, 4H, 4W, C/8]."""
        return _run(self.embedding_encoder, image_embeddings) + _run(self.compress_vit_feat, early)

    def predict_masks(
        self,
        image_embeddings,
        image_pe,
        sparse,
        dense,
        token_valid=None,
        return_intermediates=False,
    ):
        """All five masks [B, 5, 4H, 4W] (SAM's four, the HQ mask) and SAM's four IoUs."""
        c_sam = self.transformer_dim
        if image_embeddings.shape[-1] != c_sam + self.vit_dim:
            raise ValueError(
                f"HQ-SAM's decoder takes image embeddings with {c_sam} + {self.vit_dim} channels "
                f"(SAM's embedding, then the early encoder features), got "
                f"{image_embeddings.shape}: encode the image with the HQ model's encoder"
            )
        dtype = self.dtype or jnp.float32
        embeddings = image_embeddings[..., :c_sam].astype(dtype)
        hq_features = self.hq_features(embeddings, image_embeddings[..., c_sam:].astype(dtype))
        hs, src, intermediates = self.run_transformer(
            (self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight),
            embeddings,
            image_pe,
            sparse,
            dense,
            token_valid,
            return_intermediates,
        )
        n_sam = self.num_mask_tokens
        mask_tokens_out = hs[:, 1 : 2 + n_sam, :]
        upscaled = _run(self.output_upscaling, src)  # [B, 4H, 4W, C/8]
        upscaled_hq = _run(self.embedding_maskfeature, upscaled) + hq_features
        mlps = [*self.output_hypernetworks_mlps, self.hf_mlp]
        hyper_in = jnp.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(mlps)], axis=1)
        precision = precision_for(hyper_in.dtype)
        masks_sam = jnp.einsum(
            "bmc,bhwc->bmhw",
            hyper_in[:, :n_sam],
            upscaled.astype(hyper_in.dtype),
            precision=precision,
        )
        masks_hq = jnp.einsum(
            "bmc,bhwc->bmhw",
            hyper_in[:, n_sam:],
            jnp.broadcast_to(upscaled_hq, upscaled.shape).astype(hyper_in.dtype),
            precision=precision,
        )
        masks = jnp.concatenate([masks_sam, masks_hq], axis=1)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        return masks.astype(jnp.float32), iou_pred.astype(jnp.float32), intermediates


def hq_options(mask_decoder: MaskDecoder, hq_token_only: bool) -> dict[str, Any]:
    """The HQ decoder's extra argument; refused for SAM's decoder, which has no HQ token."""
    if isinstance(mask_decoder, MaskDecoderHQ):
        return {"hq_token_only": hq_token_only}
    if hq_token_only:
        raise ValueError("hq_token_only=True needs an HQ-SAM model (hq_vit_*); this one is SAM")
    return {}
