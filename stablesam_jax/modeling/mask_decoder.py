"""SAM's mask decoder (`segment_anything/modeling/mask_decoder.py`) in Flax NNX, NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .common import (
    Activation,
    ConvTranspose2x2,
    Embedding,
    LayerNorm2d,
    Linear,
    gelu,
    precision_for,
)
from .plugins import FixedImageTokens, PluginConfig
from .transformer import TwoWayTransformer


class MLP(nnx.Module):
    def __init__(
        self,
        input_dim,
        hidden_dim,
        output_dim,
        num_layers,
        *,
        rngs,
        dtype=None,
        sigmoid_output: bool = False,
    ):
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nnx.List([Linear(n, k, rngs=rngs, dtype=dtype) for n, k in zip(dims, outs)])
        self.num_layers = num_layers
        self.sigmoid_output = sigmoid_output

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = jax.nn.relu(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        transformer_depth: int = 2,
        transformer_heads: int = 8,
        transformer_mlp_dim: int = 2048,
        dtype=None,
        plugins: PluginConfig | None = None,
    ):
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer(
            transformer_depth,
            transformer_dim,
            transformer_heads,
            transformer_mlp_dim,
            rngs=rngs,
            dtype=dtype,
            plugins=plugins,
        )
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = Embedding(1, transformer_dim, rngs=rngs)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = Embedding(self.num_mask_tokens, transformer_dim, rngs=rngs)
        self.output_upscaling = nnx.List(
            [
                ConvTranspose2x2(transformer_dim, transformer_dim // 4, rngs=rngs, dtype=dtype),
                LayerNorm2d(transformer_dim // 4),
                Activation(gelu),
                ConvTranspose2x2(
                    transformer_dim // 4, transformer_dim // 8, rngs=rngs, dtype=dtype
                ),
                Activation(gelu),
            ]
        )
        self.output_hypernetworks_mlps = nnx.List(
            [
                MLP(
                    transformer_dim,
                    transformer_dim,
                    transformer_dim // 8,
                    3,
                    rngs=rngs,
                    dtype=dtype,
                )
                for _ in range(self.num_mask_tokens)
            ]
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            rngs=rngs,
            dtype=dtype,
        )
        self.dtype = dtype
        # [H, W, C] the transformer's image output, replacing the computed one, when set.
        self.fixed_image_tokens: FixedImageTokens | None = nnx.data(None)

    @property
    def num_output_tokens(self) -> int:
        """The tokens ahead of the prompt tokens, which masks and IoUs are read from: the IoU
        token and the mask tokens."""
        return 1 + self.num_mask_tokens

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool | None,
        token_valid: jax.Array | None = None,
        return_intermediates: bool = False,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """image_embeddings [1 or B, H, W, C] (broadcast over prompts), image_pe [1, H, W, C],
        sparse [B, N, C], dense [B, H, W, C], token_valid [B, N] (None = all valid).

        Returns masks [B, M, 4H, 4W] logits, iou_pred [B, M] and a dict of named intermediates
        (the plugins' always; token-to-image attention only when asked). M is 3 for
        `multimask_output=True`, 1 for False and all 4 mask tokens for None (export, training).
        """
        masks, iou_pred, intermediates = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            token_valid,
            return_intermediates,
        )
        if multimask_output is not None:
            sl = slice(1, None) if multimask_output else slice(0, 1)
            masks, iou_pred = masks[:, sl], iou_pred[:, sl]
        return masks, iou_pred, intermediates

    def run_transformer(
        self,
        output_tokens: tuple[jax.Array, ...],
        image_embeddings,
        image_pe,
        sparse,
        dense,
        token_valid=None,
        return_intermediates=False,
    ):
        """The two-way transformer on the output tokens (each [n_i, C], in order) followed by the
        prompt tokens sparse [B, Ns, C]; image_embeddings [1|B, H, W, C] + dense [B, H, W, C].
        Returns (token outputs [B, sum n_i + Ns, C], image tokens [B, H, W, C], intermediates)."""
        b = sparse.shape[0]
        dtype = self.dtype or jnp.float32
        tokens_out = jnp.concatenate(output_tokens, axis=0)
        tokens_out = jnp.broadcast_to(tokens_out, (b, *tokens_out.shape))
        tokens = jnp.concatenate([tokens_out, sparse.astype(tokens_out.dtype)], axis=1)
        token_mask = None
        if token_valid is not None:
            token_mask = jnp.concatenate(
                [jnp.ones((b, tokens_out.shape[1]), bool), token_valid.astype(bool)], axis=1
            )
        src = jnp.broadcast_to(image_embeddings, (b, *image_embeddings.shape[1:]))
        src = (src + dense).astype(dtype)
        _, h, w, c = src.shape
        hs, src, intermediates = self.transformer(
            src, image_pe.astype(dtype), tokens.astype(dtype), token_mask, return_intermediates
        )
        src = src.reshape(b, h, w, c)
        if self.fixed_image_tokens is not None:
            fixed = self.fixed_image_tokens[...].astype(src.dtype)
            src = jnp.broadcast_to(fixed, src.shape)
        if return_intermediates:
            intermediates["image_tokens"] = src  # [B, H, W, C]: what the mask is read from
        return hs, src, intermediates

    def predict_masks(
        self,
        image_embeddings,
        image_pe,
        sparse,
        dense,
        token_valid=None,
        return_intermediates=False,
    ):
        hs, upscaled, intermediates = self.run_transformer(
            (self.iou_token.weight, self.mask_tokens.weight),
            image_embeddings,
            image_pe,
            sparse,
            dense,
            token_valid,
            return_intermediates,
        )
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        for layer in self.output_upscaling:
            upscaled = layer(upscaled)  # [B, 4H, 4W, C/8]
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )  # [B, M, C/8]
        masks = jnp.einsum(
            "bmc,bhwc->bmhw",
            hyper_in,
            upscaled.astype(hyper_in.dtype),
            precision=precision_for(hyper_in.dtype),
        )
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks.astype(jnp.float32), iou_pred.astype(jnp.float32), intermediates
