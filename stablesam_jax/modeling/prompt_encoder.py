"""SAM's prompt encoder (`segment_anything/modeling/prompt_encoder.py`) in Flax NNX, NHWC.

Two entry points:
- `__call__(points, boxes, masks)`: the official one, token count depending on the prompt.
- `encode_padded(...)`: fixed shapes for batches that mix prompt kinds (training, evaluation,
  bucketed serving). Empty slots carry `PAD_LABEL`; the decoder masks them out of attention, so a
  padded prompt gives the same outputs as the official call on the unpadded one.
"""

from __future__ import annotations

import math
from typing import cast

import jax
import jax.numpy as jnp
from flax import nnx

from ..constants import NOT_A_POINT_LABEL, PAD_LABEL
from .common import Activation, Buffer, Conv, Embedding, LayerNorm2d, gelu


class PositionEmbeddingRandom(nnx.Module):
    """Random Fourier features of normalized (x, y) coordinates."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None, *, rngs: nnx.Rngs):
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.positional_encoding_gaussian_matrix = Buffer(
            scale * jax.random.normal(rngs.params(), (2, num_pos_feats))
        )

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        """coords [..., 2] in [0, 1] -> [..., 2 * num_pos_feats]."""
        coords = 2 * coords - 1
        coords = jnp.matmul(
            coords,
            self.positional_encoding_gaussian_matrix[...],
            precision=jax.lax.Precision.HIGHEST,
        )
        coords = 2 * math.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def __call__(self, size: tuple[int, int]) -> jax.Array:
        """Dense encoding of a grid of cell centres: [H, W, C]."""
        h, w = size
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
        return self._pe_encoding(grid)

    def forward_with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel coordinates [..., 2] (x, y) in an image of (H, W) -> [..., C]."""
        coords = coords.astype(jnp.float32)
        coords = coords / jnp.array([image_size[1], image_size[0]], jnp.float32)
        return self._pe_encoding(coords)


class PromptEncoder(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ):
        self.embed_dim = embed_dim
        self.input_image_size = cast(tuple[int, int], tuple(input_image_size))
        self.image_embedding_size = cast(tuple[int, int], tuple(image_embedding_size))
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2, rngs=rngs)
        self.num_point_embeddings = 4  # negative point, positive point, box corner 1, corner 2
        self.point_embeddings = nnx.List(
            [Embedding(1, embed_dim, rngs=rngs) for _ in range(self.num_point_embeddings)]
        )
        self.not_a_point_embed = Embedding(1, embed_dim, rngs=rngs)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nnx.List(
            [
                Conv(1, mask_in_chans // 4, 2, stride=2, rngs=rngs),
                LayerNorm2d(mask_in_chans // 4),
                Activation(gelu),
                Conv(mask_in_chans // 4, mask_in_chans, 2, stride=2, rngs=rngs),
                LayerNorm2d(mask_in_chans),
                Activation(gelu),
                Conv(mask_in_chans, embed_dim, 1, rngs=rngs),
            ]
        )
        self.no_mask_embed = Embedding(1, embed_dim, rngs=rngs)

    def get_dense_pe(self) -> jax.Array:
        """[1, H, W, C] positional encoding of the image embedding grid."""
        return self.pe_layer(self.image_embedding_size)[None]

    def _embed_points(self, points: jax.Array, labels: jax.Array) -> jax.Array:
        """points [B, N, 2] (x, y in input pixels), labels [B, N] -> [B, N, C]."""
        points = points.astype(jnp.float32) + 0.5  # pixel centres
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = jnp.where(labels < 0, 0.0, emb)
        emb = emb + jnp.where(labels == NOT_A_POINT_LABEL, self.not_a_point_embed.weight, 0.0)
        emb = emb + jnp.where(labels == 0, self.point_embeddings[0].weight, 0.0)
        emb = emb + jnp.where(labels == 1, self.point_embeddings[1].weight, 0.0)
        return emb

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        """boxes [B, 4] (x0, y0, x1, y1 in input pixels) -> [B, 2, C]."""
        coords = boxes.astype(jnp.float32).reshape(-1, 2, 2) + 0.5
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corners = jnp.concatenate(
            [self.point_embeddings[2].weight, self.point_embeddings[3].weight], axis=0
        )
        return emb + corners[None]

    def _embed_masks(self, masks: jax.Array) -> jax.Array:
        """masks [B, 256, 256] logits -> [B, 64, 64, C]."""
        x = masks[..., None].astype(jnp.float32)
        for layer in self.mask_downscaling:
            x = layer(x)
        return x

    def _no_mask_dense(self, batch: int) -> jax.Array:
        h, w = self.image_embedding_size
        return jnp.broadcast_to(self.no_mask_embed.weight[0], (batch, h, w, self.embed_dim))

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """The official signature. masks: [B, 256, 256] (or [B, 1, 256, 256]) logits.

        Returns (sparse [B, N, C], dense [B, 64, 64, C])."""
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        sparse = [jnp.zeros((batch, 0, self.embed_dim), jnp.float32)]
        if points is not None:
            coords, labels = points
            if boxes is None:  # SAM appends a "not a point" token when no box follows
                coords = jnp.concatenate([coords, jnp.zeros((batch, 1, 2), coords.dtype)], 1)
                labels = jnp.concatenate(
                    [labels, jnp.full((batch, 1), NOT_A_POINT_LABEL, labels.dtype)], 1
                )
            sparse.append(self._embed_points(coords, labels))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            masks = masks.reshape(batch, *masks.shape[-2:])
            dense = self._embed_masks(masks)
        else:
            dense = self._no_mask_dense(batch)
        return jnp.concatenate(sparse, axis=1), dense

    def encode_padded(
        self,
        point_coords: jax.Array,
        point_labels: jax.Array,
        boxes: jax.Array,
        box_valid: jax.Array,
        mask_input: jax.Array | None = None,
        mask_valid: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Fixed-shape prompts. point_coords [B, N, 2], point_labels [B, N] (PAD_LABEL = empty),
        boxes [B, 4], box_valid [B], mask_input [B, 256, 256], mask_valid [B].

        Returns (sparse [B, N + 3, C], token_valid [B, N + 3], dense [B, 64, 64, C]); token order
        is the official one: points, the "not a point" token, box corners.
        """
        batch = point_coords.shape[0]
        has_points = jnp.any(point_labels != PAD_LABEL, axis=1)
        not_a_point_valid = has_points & ~box_valid
        coords = jnp.concatenate([point_coords, jnp.zeros((batch, 1, 2), point_coords.dtype)], 1)
        labels = jnp.concatenate(
            [
                point_labels,
                jnp.where(not_a_point_valid, NOT_A_POINT_LABEL, PAD_LABEL)[:, None].astype(
                    point_labels.dtype
                ),
            ],
            1,
        )
        point_tokens = self._embed_points(coords, labels)
        box_tokens = self._embed_boxes(boxes)
        sparse = jnp.concatenate([point_tokens, box_tokens], axis=1)
        token_valid = jnp.concatenate(
            [labels != PAD_LABEL, jnp.broadcast_to(box_valid[:, None], (batch, 2))], axis=1
        )
        sparse = jnp.where(token_valid[..., None], sparse, 0.0)
        dense = self._no_mask_dense(batch)
        if mask_input is not None:
            if mask_valid is None:
                mask_valid = jnp.ones((batch,), bool)
            dense = jnp.where(mask_valid[:, None, None, None], self._embed_masks(mask_input), dense)
        return sparse, token_valid, dense
