"""SAM's ViT image encoder (`segment_anything/modeling/image_encoder.py`) in Flax NNX, NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from . import ops
from .common import Conv, LayerNorm, LayerNorm2d, Linear, MLPBlock, gelu

ATTENTION_IMPLS = ("reference", "folded", "folded_cudnn")


class Attention(nnx.Module):
    """Multi-head attention with decomposed relative positions (on whole images or windows)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        input_size: tuple[int, int],
        *,
        rngs: nnx.Rngs,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        dtype=None,
        attention_impl: str = "reference",
    ):
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}"
            )
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = Linear(dim, dim * 3, rngs=rngs, use_bias=qkv_bias, dtype=dtype)
        self.proj = Linear(dim, dim, rngs=rngs, dtype=dtype)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            # torch zero-initializes these; random values keep a fresh model from hiding bugs.
            self.rel_pos_h = nnx.Param(
                0.02 * jax.random.normal(rngs.params(), (2 * input_size[0] - 1, head_dim))
            )
            self.rel_pos_w = nnx.Param(
                0.02 * jax.random.normal(rngs.params(), (2 * input_size[1] - 1, head_dim))
            )
        self.attention_impl = attention_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each [B, heads, H*W, head_dim]
        rel_h = rel_w = None
        if self.use_rel_pos:
            rel_h, rel_w = ops.decomposed_rel_pos_terms(
                q, self.rel_pos_h[...], self.rel_pos_w[...], (h, w)
            )
        if self.attention_impl == "reference" or not self.use_rel_pos:
            out = ops.attention_with_rel_pos(q, k, v, self.scale, rel_h, rel_w, (h, w))
        else:
            impl = "cudnn" if self.attention_impl == "folded_cudnn" else None
            out = ops.folded_rel_pos_attention(
                q, k, v, self.scale, rel_h, rel_w, (h, w), implementation=impl
            )
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, -1)
        return self.proj(out)


class Block(nnx.Module):
    """Pre-norm transformer block; window_size > 0 attends inside non-overlapping windows."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        rngs: nnx.Rngs,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] = (64, 64),
        dtype=None,
        attention_impl: str = "reference",
    ):
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads,
            input_size if window_size == 0 else (window_size, window_size),
            rngs=rngs,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            dtype=dtype,
            attention_impl=attention_impl,
        )
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), gelu, rngs=rngs, dtype=dtype)
        self.window_size = window_size

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded_hw = ops.window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = ops.window_unpartition(x, self.window_size, padded_hw, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nnx.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, rngs, dtype=None):
        self.proj = Conv(in_chans, embed_dim, patch_size, stride=patch_size, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)  # [B, H, W, 3] -> [B, H/16, W/16, embed_dim]


class ImageEncoderViT(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
        dtype=None,
        attention_impl: str = "reference",
    ):
        self.img_size = img_size
        self.dtype = dtype
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, rngs=rngs, dtype=dtype)
        self.pos_embed = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, grid, grid, embed_dim)))
            if use_abs_pos
            else None
        )
        self.blocks = nnx.List(
            [
                Block(
                    embed_dim,
                    num_heads,
                    rngs=rngs,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    use_rel_pos=use_rel_pos,
                    window_size=0 if i in global_attn_indexes else window_size,
                    input_size=(grid, grid),
                    dtype=dtype,
                    attention_impl=attention_impl,
                )
                for i in range(depth)
            ]
        )
        self.neck = nnx.List(
            [
                Conv(embed_dim, out_chans, 1, use_bias=False, rngs=rngs, dtype=dtype),
                LayerNorm2d(out_chans),
                Conv(out_chans, out_chans, 3, padding=1, use_bias=False, rngs=rngs, dtype=dtype),
                LayerNorm2d(out_chans),
            ]
        )

    def __call__(self, x: jax.Array, *, return_intermediates: bool = False):
        """x: [B, img_size, img_size, 3] normalized pixels -> [B, 64, 64, out_chans] (fp32)."""
        intermediates = {}
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(x.dtype)
        intermediates["patch_embed"] = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if return_intermediates:
                intermediates[f"block{i}"] = x
        for layer in self.neck:
            x = layer(x)
        x = x.astype(jnp.float32)
        if return_intermediates:
            intermediates["neck"] = x
            return x, intermediates
        return x
