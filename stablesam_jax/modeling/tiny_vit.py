"""TinyViT, MobileSAM's image encoder (`segment_anything_hq/modeling/tiny_vit_sam.py`), NHWC.

Attribute names follow the official module so a state dict converts by the identity map
(`Conv2d_BN` is `c` + `bn`, BatchNorm `weight` is our `scale`). Differences from the official
code, all of them on purpose (docs/design.md, "HQ-SAM and TinyViT as built"):
- BatchNorm always runs in inference mode on its running statistics: SAM is frozen here.
- Attention biases are gathered from `attention_biases` on every call; the official module caches
  them when `.eval()` runs, so weights loaded after `.eval()` are ignored there until it runs again.
- The output grid is the actual one; the official forward hard-codes 64x64 (1024 px input).
- The classifier head (`norm_head`, `head`) is not built: nothing in segmentation uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import ops
from .common import (
    Activation,
    Buffer,
    Conv,
    LayerNorm,
    LayerNorm2d,
    Linear,
    gelu,
    pointwise,
    precision_for,
)

# The official PatchMerging keeps the resolution (stride 1) for these output widths only: the
# last merge of every released TinyViT, so stage 4 runs on the same 1/16 grid as stage 3.
_STRIDE_ONE_WIDTHS = (320, 448, 576)


@dataclasses.dataclass(frozen=True)
class TinyViTConfig:
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3

    @property
    def early_dim(self) -> int:
        """Width of the features after stage 2's merge: what HQ-SAM's decoder takes."""
        return self.embed_dims[2]


# MobileSAM's TinyViT-5M; a test size keeping what the official code hard-codes: 1024 px (its
# forward reshapes to 64x64) and a last width of 320 (its last merge keeps the grid only then).
TINY_VIT_5M = TinyViTConfig()
TINY_VIT_TEST = TinyViTConfig(
    embed_dims=(8, 16, 24, 320), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 2), mlp_ratio=2.0
)


class BatchNorm2d(nnx.Module):
    """torch.nn.BatchNorm2d in inference mode (running statistics), channels last."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.running_mean = Buffer(jnp.zeros((dim,), jnp.float32))
        self.running_var = Buffer(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        inv = jax.lax.rsqrt(self.running_var[...] + self.eps) * self.scale[...]
        y = (x.astype(jnp.float32) - self.running_mean[...]) * inv + self.bias[...]
        return y.astype(dtype)


class Conv2d_BN(nnx.Module):  # noqa: N801 - the official name, so state dict keys match
    def __init__(self, a, b, ks=1, stride=1, pad=0, groups=1, *, rngs, dtype=None):
        self.c = Conv(
            a,
            b,
            ks,
            stride=stride,
            padding=pad,
            groups=groups,
            use_bias=False,
            rngs=rngs,
            dtype=dtype,
        )
        self.bn = BatchNorm2d(b)

    def __call__(self, x: jax.Array) -> jax.Array:
        one_by_one = self.c.kernel.shape[:2] == (1, 1) and self.c.stride == 1 and self.c.groups == 1
        return self.bn(pointwise(self.c, x) if one_by_one else self.c(x))


class PatchEmbed(nnx.Module):
    """Two stride-2 3x3 convolutions: [B, S, S, 3] -> [B, S/4, S/4, dim]."""

    def __init__(self, in_chans: int, dim: int, *, rngs, dtype=None):
        self.seq = nnx.List(
            [
                Conv2d_BN(in_chans, dim // 2, 3, 2, 1, rngs=rngs, dtype=dtype),
                Activation(gelu),
                Conv2d_BN(dim // 2, dim, 3, 2, 1, rngs=rngs, dtype=dtype),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.seq:
            x = layer(x)
        return x


class MBConv(nnx.Module):
    def __init__(self, dim: int, expand_ratio: float, *, rngs, dtype=None):
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2d_BN(dim, hidden, 1, rngs=rngs, dtype=dtype)
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden, rngs=rngs, dtype=dtype)
        self.conv3 = Conv2d_BN(hidden, dim, 1, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = gelu(self.conv1(x))
        y = gelu(self.conv2(y))
        return gelu(self.conv3(y) + x)


class PatchMerging(nnx.Module):
    def __init__(self, dim: int, out_dim: int, *, rngs, dtype=None):
        self.stride = 1 if out_dim in _STRIDE_ONE_WIDTHS else 2
        self.conv1 = Conv2d_BN(dim, out_dim, 1, rngs=rngs, dtype=dtype)
        self.conv2 = Conv2d_BN(
            out_dim, out_dim, 3, self.stride, 1, groups=out_dim, rngs=rngs, dtype=dtype
        )
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = gelu(self.conv1(x))
        x = gelu(self.conv2(x))
        return self.conv3(x)


class ConvLayer(nnx.Module):
    """Stage 1: MBConv blocks, then a patch merge."""

    def __init__(self, dim, depth, out_dim, expand_ratio, *, rngs, dtype=None):
        self.blocks = nnx.List(
            [MBConv(dim, expand_ratio, rngs=rngs, dtype=dtype) for _ in range(depth)]
        )
        self.downsample = PatchMerging(dim, out_dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs, dtype=None):
        self.norm = LayerNorm(dim)  # torch default eps 1e-5
        self.fc1 = Linear(dim, hidden, rngs=rngs, dtype=dtype)
        self.fc2 = Linear(hidden, dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(self.norm(x))))


@functools.lru_cache(maxsize=16)
def attention_bias_idxs(resolution: int) -> np.ndarray:
    """[N, N] index of each query/key pair's offset (|dy|, |dx|) in first-seen order, as the
    official module numbers them; N = resolution**2 (row-major positions in a window)."""
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(offset, len(offsets)))
    return np.asarray(idxs, np.int32).reshape(len(points), len(points))


class Attention(nnx.Module):
    """Window attention with a learned bias per head and (|dy|, |dx|) offset (LeViT style)."""

    def __init__(self, dim: int, num_heads: int, resolution: int, *, rngs, dtype=None):
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.resolution = resolution
        self.norm = LayerNorm(dim)
        self.qkv = Linear(dim, 3 * dim, rngs=rngs, dtype=dtype)
        self.proj = Linear(dim, dim, rngs=rngs, dtype=dtype)
        n_offsets = int(attention_bias_idxs(resolution).max()) + 1
        # torch zero-initializes these; random values keep a fresh model from hiding bugs.
        self.attention_biases = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (num_heads, n_offsets))
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, N, C] tokens of windows (N = resolution**2) -> [B, N, C]."""
        b, n, _ = x.shape
        dtype = self.dtype or x.dtype
        qkv = self.qkv(self.norm(x)).reshape(b, n, self.num_heads, 3 * self.key_dim)
        # Per head [q | k | v], as the official `split([key_dim, key_dim, d], dim=3)`.
        q, k, v = jnp.split(qkv.transpose(0, 2, 1, 3), 3, axis=-1)
        precision = precision_for(dtype)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=precision) * self.scale
        bias = self.attention_biases[...][:, attention_bias_idxs(self.resolution)]
        attn = jax.nn.softmax(logits.astype(jnp.float32) + bias, axis=-1).astype(dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", attn, v, precision=precision)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


class TinyViTBlock(nnx.Module):
    def __init__(self, dim, num_heads, window_size, mlp_ratio, local_conv_size, *, rngs, dtype):
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size, rngs=rngs, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
        self.local_conv = Conv2d_BN(
            dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim, rngs=rngs, dtype=dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C]. Windows are zero-padded at the bottom/right before the attention's
        LayerNorm, so padded tokens take part as keys, as in the official block."""
        b, h, w, c = x.shape
        ws = self.window_size
        windows, padded_hw = ops.window_partition(x, ws)
        y = self.attn(windows.reshape(-1, ws * ws, c)).reshape(-1, ws, ws, c)
        x = x + ops.window_unpartition(y, ws, padded_hw, (h, w))
        x = self.local_conv(x)
        return x + self.mlp(x)


class BasicLayer(nnx.Module):
    """Stages 2-4: TinyViT blocks, then (except the last stage) a patch merge."""

    def __init__(self, dim, depth, num_heads, window_size, out_dim, cfg, *, rngs, dtype=None):
        self.blocks = nnx.List(
            [
                TinyViTBlock(
                    dim,
                    num_heads,
                    window_size,
                    cfg.mlp_ratio,
                    cfg.local_conv_size,
                    rngs=rngs,
                    dtype=dtype,
                )
                for _ in range(depth)
            ]
        )
        self.downsample = (
            None if out_dim is None else PatchMerging(dim, out_dim, rngs=rngs, dtype=dtype)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nnx.Module):
    def __init__(
        self,
        config: TinyViTConfig,
        *,
        rngs: nnx.Rngs,
        img_size: int = 1024,
        in_chans: int = 3,
        out_chans: int = 256,
        hq_features: bool = False,
        dtype=None,
    ):
        """hq_features: append the features after stage 2's merge ([B, g, g, early_dim], the
        ones HQ-SAM's decoder takes) to the output's channels."""
        dims, n = config.embed_dims, len(config.embed_dims)
        if not (n == len(config.depths) == len(config.num_heads) == len(config.window_sizes) == 4):
            raise ValueError(f"TinyViT has 4 stages; got {config}")
        if dims[3] not in _STRIDE_ONE_WIDTHS:
            raise ValueError(
                f"TinyViT's last stage width must be one of {_STRIDE_ONE_WIDTHS} (the official "
                f"patch merging keeps the 1/16 grid only for those), got {dims[3]}"
            )
        self.img_size = img_size
        self.hq_features = hq_features
        self.patch_embed = PatchEmbed(in_chans, dims[0], rngs=rngs, dtype=dtype)
        layers: list[nnx.Module] = [
            ConvLayer(
                dims[0],
                config.depths[0],
                dims[1],
                config.mbconv_expand_ratio,
                rngs=rngs,
                dtype=dtype,
            )
        ]
        for i in range(1, n):
            layers.append(
                BasicLayer(
                    dims[i],
                    config.depths[i],
                    config.num_heads[i],
                    config.window_sizes[i],
                    dims[i + 1] if i < n - 1 else None,
                    config,
                    rngs=rngs,
                    dtype=dtype,
                )
            )
        self.layers = nnx.List(layers)
        self.neck = nnx.List(
            [
                Conv(dims[-1], out_chans, 1, use_bias=False, rngs=rngs, dtype=dtype),
                LayerNorm2d(out_chans),
                Conv(out_chans, out_chans, 3, padding=1, use_bias=False, rngs=rngs, dtype=dtype),
                LayerNorm2d(out_chans),
            ]
        )

    def __call__(self, x: jax.Array, *, return_intermediates: bool = False):
        """x [B, S, S, 3] normalized pixels -> [B, S/16, S/16, out_chans] (fp32), with the stage-2
        features appended to the channels when built with `hq_features`."""
        intermediates = {}
        x = self.patch_embed(x)
        intermediates["patch_embed"] = x
        early = None
        for i, layer in enumerate(self.layers):
            x = layer(x)
            intermediates[f"layer{i}"] = x
            if i == 1:
                early = x
        for layer in self.neck:
            x = layer(x)
        x = x.astype(jnp.float32)
        intermediates["neck"] = x
        if self.hq_features and early is not None:
            x = jnp.concatenate([x, early.astype(jnp.float32)], axis=-1)
        return (x, intermediates) if return_intermediates else x
