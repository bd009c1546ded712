"""SAM's two-way transformer (`segment_anything/modeling/transformer.py`) with Stable-SAM hooks.

A block listed in `PluginConfig.dsp_layers` owns a deformable sampling plugin (`dsp`) and, unless
disabled, a dynamic routing plugin (`drp`) for its token-to-image cross-attention. Without plugins
the computation is the official one, op for op.
"""

from __future__ import annotations

import math
from typing import cast

import jax
import jax.numpy as jnp
from flax import nnx

from . import sampling
from .common import LayerNorm, Linear, MLPBlock, precision_for, relu
from .plugins import (
    DeformableSamplingPlugin,
    DynamicRoutingPlugin,
    FixedTokenRead,
    PluginConfig,
)


class Attention(nnx.Module):
    """Attention with an optional downscaled internal width (queries and keys of any length)."""

    def __init__(
        self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, *, rngs, dtype=None
    ):
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = Linear(embedding_dim, self.internal_dim, rngs=rngs, dtype=dtype)
        self.k_proj = Linear(embedding_dim, self.internal_dim, rngs=rngs, dtype=dtype)
        self.v_proj = Linear(embedding_dim, self.internal_dim, rngs=rngs, dtype=dtype)
        self.out_proj = Linear(self.internal_dim, embedding_dim, rngs=rngs, dtype=dtype)

    def _separate_heads(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(0, 2, 1, 3)

    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        key_mask: jax.Array | None = None,
        return_weights: bool = False,
    ):
        """q [B, Nq, C], k/v [B, Nk, C], key_mask [B, Nk] (False = ignore) -> [B, Nq, C]."""
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v), key_mask, return_weights)

    def attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        key_mask: jax.Array | None = None,
        return_weights: bool = False,
    ):
        """`__call__` after the q/k/v projections: q [B, Nq, D], k/v [B, Nk, D], D the internal
        width -> [B, Nq, C] (and the weights [B, heads, Nq, Nk])."""
        q = self._separate_heads(q)
        k = self._separate_heads(k)
        v = self._separate_heads(v)
        prec = precision_for(q.dtype)
        logits = jnp.einsum("bnqc,bnkc->bnqk", q, k, precision=prec) / math.sqrt(q.shape[-1])
        logits = logits.astype(jnp.float32)
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bnqk,bnkc->bnqc", weights.astype(v.dtype), v, precision=prec)
        b, n, nq, c = out.shape
        out = self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, nq, n * c))
        return (out, weights) if return_weights else out


def _matmul(x: jax.Array, linear: Linear) -> jax.Array:
    """`linear(x)` without its bias."""
    dtype = linear.dtype or x.dtype
    kernel = linear.kernel[...].astype(dtype)
    return jnp.dot(x.astype(dtype), kernel, precision=precision_for(dtype))


def _add_bias(x: jax.Array, linear: Linear) -> jax.Array:
    dtype = linear.dtype or x.dtype
    if linear.bias is None:
        return x.astype(dtype)
    return (x + linear.bias[...]).astype(dtype)


def _one_prompt_at_a_time() -> bool:
    """On a CPU the plugin's per-prompt temporaries (several 64x64x256 maps) should stay in cache
    and be allocated once per call, not once per prompt (fresh memory costs a page fault per 4 KiB
    on first touch); accelerators want the whole batch in each kernel."""
    return jax.default_backend() == "cpu"


def _over_prompts(fn, xs):
    """`jax.vmap(fn)(xs)`, or the same as a loop (`lax.map`) where `_one_prompt_at_a_time`."""
    if _one_prompt_at_a_time():
        return jax.lax.map(fn, xs)
    return jax.vmap(fn)(xs)


class TwoWayAttentionBlock(nnx.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        plugins: PluginConfig | None = None,
        layer_index: int = 0,
    ):
        self.self_attn = Attention(embedding_dim, num_heads, rngs=rngs, dtype=dtype)
        self.norm1 = LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate, rngs=rngs, dtype=dtype
        )
        self.norm2 = LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, relu, rngs=rngs, dtype=dtype)
        self.norm3 = LayerNorm(embedding_dim)
        self.norm4 = LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, attention_downsample_rate, rngs=rngs, dtype=dtype
        )
        self.skip_first_layer_pe = skip_first_layer_pe
        self.plugins = plugins
        dsp: DeformableSamplingPlugin | None = None
        drp: DynamicRoutingPlugin | None = None
        if plugins:
            # A stream of their own: adding plugins must not change how SAM's weights initialize.
            plugin_rngs = nnx.Rngs(plugins.seed + 1000 * layer_index)
            dsp = DeformableSamplingPlugin(embedding_dim, plugins, rngs=plugin_rngs)
            if plugins.use_drp:
                drp = DynamicRoutingPlugin(
                    embedding_dim, plugins.drp_hidden_dim, plugins.routing, rngs=plugin_rngs
                )
        self.dsp = nnx.data(dsp)
        self.drp = nnx.data(drp)
        # [n, C] the output tokens' token-to-image read, replacing the computed one, when set.
        self.fixed_read: FixedTokenRead | None = nnx.data(None)

    def _plugin_attention(self, queries, q, keys, key_pe, hw, intermediates, return_weights):
        """The token-to-image attention with Stable-SAM's keys and values (paper Eq. 4-6).

        Bilinear resampling S is linear per channel, so it commutes with the key/value
        projections: Wk(a1 S(x + pe) + a2 (x + pe)) + bk = a1 S(Wk(x + pe)) + a2 Wk(x + pe) + bk,
        likewise Wv x. So SAM's own projections are computed once and only their 2 x D channels
        are resampled, instead of two C-channel maps that are then projected. The biases stay
        outside S, whose weights sum to less than 1 next to the border (zero padding).
        """
        attn = self.cross_attn_token_to_image
        dsp = cast(DeformableSamplingPlugin, self.dsp)  # only called when there is one
        alpha = None if self.drp is None else self.drp(queries[:, 1, :])  # single-mask token
        h, w = hw
        # The projections as SAM computes them (one product over all prompts; keys + key_pe is
        # the array the image-to-token attention below uses too).
        x_pe = keys + key_pe
        k_reg, v_reg = _matmul(x_pe, attn.k_proj), _matmul(keys, attn.v_proj)
        projected = dsp.project(keys)
        sources: tuple[jax.Array | None, jax.Array | None] = (None, None)  # "raw": regular k, v
        if dsp.sample == "projected":
            sources = (_matmul(projected + key_pe, attn.k_proj), _matmul(projected, attn.v_proj))

        def one_prompt(args):
            proj, k_reg, v_reg, k_src, v_src, q_p, a = args  # [H*W, C|D] x 5, [Nt, D], [2]|None
            if k_src is None:
                k_src, v_src = k_reg, v_reg
            offsets = dsp.offsets_of_projected(proj.reshape(1, h, w, -1))[0]
            positions = dsp.sampling_positions(offsets)
            if dsp.fixed_mixture is not None:
                mixture = dsp.fixed_mixture[...].astype(k_src.dtype)  # [H*W, H*W]
                k, v = mixture @ k_src, mixture @ v_src
            else:
                corners = sampling.bilinear_corners(positions.reshape(h * w, 2), hw)
                k = sampling.gather_bilinear(k_src, *corners)
                v = sampling.gather_bilinear(v_src, *corners)
            if a is not None:
                k, v = a[0] * k + a[1] * k_reg, a[0] * v + a[1] * v_reg
            k, v = _add_bias(k, attn.k_proj), _add_bias(v, attn.v_proj)
            out = attn.attend(q_p[None], k[None], v[None], return_weights=return_weights)
            out, weights = out if return_weights else (out, None)
            return out[0], None if weights is None else weights[0], positions

        xs = (projected, k_reg, v_reg, *sources, attn.q_proj(q), alpha)
        out, weights, positions = _over_prompts(one_prompt, xs)
        intermediates["dsp_positions"] = positions
        if return_weights:
            intermediates["token_to_image_values"] = _add_bias(v_reg, attn.v_proj)
        if alpha is not None:
            intermediates["drp_alpha"] = alpha
        return out, weights

    def __call__(
        self,
        queries: jax.Array,
        keys: jax.Array,
        query_pe: jax.Array,
        key_pe: jax.Array,
        *,
        hw: tuple[int, int],
        token_mask: jax.Array | None = None,
        return_intermediates: bool = False,
    ):
        """queries [B, Nt, C] tokens, keys [B, H*W, C] image, pes alike; token_mask [B, Nt]."""
        intermediates: dict[str, jax.Array] = {}
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, key_mask=token_mask)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, key_mask=token_mask)
        queries = self.norm1(queries)

        q = queries + query_pe
        if self.dsp is not None:
            attn_out, weights = self._plugin_attention(
                queries, q, keys, key_pe, hw, intermediates, return_intermediates
            )
        else:
            attn_out, weights = self.cross_attn_token_to_image(
                q, keys + key_pe, keys, return_weights=True
            )
            if return_intermediates:
                # [B, H*W, D]: the values at the cells as SAM reads them; how much they vary
                # across the map bounds what moving the samples can change (diagnostics).
                values = self.cross_attn_token_to_image.v_proj(keys)
                intermediates["token_to_image_values"] = values
        if self.fixed_read is not None:
            fixed = self.fixed_read[...].astype(attn_out.dtype)  # [n, C]
            attn_out = attn_out.at[:, : fixed.shape[0]].set(fixed)
        if return_intermediates:
            intermediates["token_to_image_attn"] = weights  # [B, heads, Nt, H*W]
            intermediates["token_to_image_out"] = attn_out  # [B, Nt, C]: what each token read
        queries = self.norm2(queries + attn_out)
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, key_mask=token_mask))
        return queries, keys, intermediates


class TwoWayTransformer(nnx.Module):
    def __init__(
        self,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        plugins: PluginConfig | None = None,
    ):
        dsp_layers = set(plugins.dsp_layers) if plugins else set()
        if dsp_layers - set(range(depth)):
            raise ValueError(f"dsp_layers {sorted(dsp_layers)} outside 0..{depth - 1}")
        self.depth = depth
        self.layers = nnx.List(
            [
                TwoWayAttentionBlock(
                    embedding_dim,
                    num_heads,
                    mlp_dim,
                    attention_downsample_rate,
                    skip_first_layer_pe=(i == 0),
                    rngs=rngs,
                    dtype=dtype,
                    plugins=plugins if i in dsp_layers else None,
                    layer_index=i,
                )
                for i in range(depth)
            ]
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate, rngs=rngs, dtype=dtype
        )
        self.norm_final_attn = LayerNorm(embedding_dim)

    def __call__(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        point_embedding: jax.Array,
        token_mask: jax.Array | None = None,
        return_intermediates: bool = False,
    ):
        """image_embedding [B, H, W, C], image_pe [1 or B, H, W, C], point_embedding [B, Nt, C].

        Returns (tokens [B, Nt, C], image tokens [B, H*W, C], intermediates per layer)."""
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        key_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
        queries = point_embedding
        intermediates = {}
        for i, layer in enumerate(self.layers):
            queries, keys, inter = layer(
                queries,
                keys,
                point_embedding,
                key_pe,
                hw=(h, w),
                token_mask=token_mask,
                return_intermediates=return_intermediates,
            )
            intermediates.update({f"layer{i}/{k}": v for k, v in inter.items()})
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys, intermediates
