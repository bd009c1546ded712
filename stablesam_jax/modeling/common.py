"""Building blocks shared by the encoder, prompt encoder and decoder.

Everything here mirrors `segment_anything/modeling/common.py` and the torch layers SAM uses, with the
torch defaults that differ from Flax spelled out (exact-erf GELU, LayerNorm epsilons).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Buffer(nnx.Variable):
    """A fixed tensor stored with the weights (torch `register_buffer`); never trained."""


class PluginParam(nnx.Param):
    """Stable-SAM plugin weights (DSP, DRP): the only weights the Stable-SAM recipe trains."""


# Weight filters, `(path, value) -> bool` as `nnx.split` / `nnx.state` take them.


def is_sam_weight(path, value) -> bool:
    """SAM's own weights and buffers: what a "sam" checkpoint holds."""
    return isinstance(value, Buffer | nnx.Param) and not isinstance(value, PluginParam)


def is_sam_param(path, value) -> bool:
    """SAM's learnable weights (buffers excluded): what SAM pretraining trains."""
    return isinstance(value, nnx.Param) and not isinstance(value, PluginParam)


def is_plugin_weight(path, value) -> bool:
    """The Stable-SAM plugin weights: what a "plugins" checkpoint holds."""
    return isinstance(value, PluginParam)


def gelu(x: jax.Array) -> jax.Array:
    # torch.nn.GELU is the exact erf form; jax.nn.gelu defaults to the tanh approximation.
    return jax.nn.gelu(x, approximate=False)


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


class Activation(nnx.Module):
    """A parameter-free slot in a layer list, so list indices match torch `nn.Sequential`."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


def precision_for(dtype) -> jax.lax.Precision:
    """fp32 means parity: full-precision matmuls (GPUs otherwise use TF32). Lower dtypes: fast."""
    if jnp.dtype(dtype) == jnp.float32:
        return jax.lax.Precision.HIGHEST
    return jax.lax.Precision.DEFAULT


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, computed in fp32 whatever the compute dtype."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis (params `scale`/`bias` <- torch `weight`/`bias`)."""

    def __init__(self, dim: int, eps: float = 1e-5, *, param_type=nnx.Param):
        self.scale = param_type(jnp.ones((dim,), jnp.float32))
        self.bias = param_type(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.eps)


def LayerNorm2d(dim: int, eps: float = 1e-6, *, param_type=nnx.Param) -> LayerNorm:
    """SAM's LayerNorm2d normalizes channels; with channels-last tensors that is a LayerNorm."""
    return LayerNorm(dim, eps, param_type=param_type)


def _uniform_init(fan_in: int):
    # torch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nnx.Module):
    """torch.nn.Linear with a (in, out) kernel and an optional compute dtype."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        use_bias: bool = True,
        dtype=None,
        param_type=nnx.Param,
        kernel_init=None,
    ):
        init = kernel_init or _uniform_init(in_features)
        self.kernel = param_type(init(rngs.params(), (in_features, out_features)))
        self.bias = (
            param_type(_uniform_init(in_features)(rngs.params(), (out_features,)))
            if use_bias
            else None
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype), precision=precision_for(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


def depthwise_conv_same(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """torch Conv2d(C, C, k, padding=k // 2, groups=C) on x [B, H, W, C]; kernel [k, k, 1, C]
    (HWIO, as `common.Conv` stores it), odd k. Accumulates in float32.

    A sum of k * k shifted slices of the zero-padded map, taken on the map flattened to rows of
    W + k - 1 cells, so each shift is one contiguous 1-D slice: XLA's CPU convolution with
    `feature_group_count` runs about ten times slower, and 2-D slices let XLA's CPU fusion split
    the sum into separately materialized copies when a LayerNorm follows."""
    b, h, w, c = x.shape
    k = kernel.shape[0]
    if kernel.shape != (k, k, 1, c) or k % 2 == 0:
        raise ValueError(f"want an odd square depthwise kernel (k, k, 1, {c}), got {kernel.shape}")
    p = k // 2
    row = w + 2 * p
    # One extra zero row at the bottom keeps the last shifted slice inside the array.
    padded = jnp.pad(x, ((0, 0), (p, p + 1), (p, p), (0, 0))).reshape(b, -1, c)
    n = h * row
    taps = kernel.reshape(k * k, c).astype(jnp.float32)

    def tap(t: int) -> jax.Array:
        offset = (t // k) * row + t % k
        return padded[:, offset : offset + n].astype(jnp.float32) * taps[t]

    acc = tap(0)
    for t in range(1, k * k):
        acc = acc + tap(t)
    out = acc.reshape(b, h, row, c)[:, :, :w]
    if bias is not None:
        out = out + bias.astype(jnp.float32)
    return out.astype(x.dtype)


def depthwise_conv_strided(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Any depthwise convolution as k*k strided slices of the padded input, scaled and summed in
    float32: x [B, H, W, C], kernel [k, k, 1, C] -> [B, H', W', C] (the strided ones in TinyViT's
    patch merging; `depthwise_conv_same` is the faster form for stride 1)."""
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h = (xp.shape[1] - k) // stride + 1
    out_w = (xp.shape[2] - k) // stride + 1
    total = jnp.zeros((x.shape[0], out_h, out_w, x.shape[3]), jnp.float32)
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (out_h - 1) + 1, stride)
            cols = slice(j, j + stride * (out_w - 1) + 1, stride)
            total = total + xp[:, rows, cols].astype(jnp.float32) * kernel[i, j, 0].astype(
                jnp.float32
            )
    return total.astype(x.dtype)


class Conv(nnx.Module):
    """torch.nn.Conv2d on NHWC tensors with an HWIO kernel (stride, padding, groups as in torch).

    Depthwise convolutions run as shifted sums: the same numbers up to summation order, 8-20x
    faster on XLA's CPU backend (`pointwise` is the same for 1x1 convolutions, for callers that
    want it; SAM's own 1x1 convolutions stay convolutions, as the parity numbers were measured)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        rngs: nnx.Rngs,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        use_bias: bool = True,
        dtype=None,
        param_type=nnx.Param,
        kernel_init=None,
    ):
        fan_in = in_channels // groups * kernel_size * kernel_size
        init = kernel_init or _uniform_init(fan_in)
        shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        self.kernel = param_type(init(rngs.params(), shape))
        self.bias = (
            param_type(_uniform_init(fan_in)(rngs.params(), (out_channels,))) if use_bias else None
        )
        self.stride = stride
        self.padding = padding
        self.groups = groups
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        kernel = self.kernel[...]
        k = kernel.shape[0]
        if self.groups > 1 and kernel.shape[2] == 1 and self.groups == kernel.shape[3]:
            # Depthwise: XLA's CPU backend runs grouped convolutions 8-20x slower than these sums.
            x, kernel = x.astype(dtype), kernel.astype(dtype)
            if self.stride == 1 and k % 2 == 1 and self.padding == k // 2:
                y = depthwise_conv_same(x, kernel, None)
            else:
                y = depthwise_conv_strided(x, kernel, self.stride, self.padding)
        else:
            y = jax.lax.conv_general_dilated(
                x.astype(dtype),
                kernel.astype(dtype),
                window_strides=(self.stride, self.stride),
                padding=[(self.padding, self.padding)] * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
                precision=precision_for(dtype),
            )
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


def pointwise(conv: Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a 1x1, stride-1, ungrouped `Conv`, as the matrix product it is (XLA's CPU
    backend runs it faster than a convolution); x [..., C_in] -> [..., C_out]."""
    dtype = conv.dtype or x.dtype
    kernel = conv.kernel[...]
    kernel = kernel.reshape(kernel.shape[-2:]).astype(dtype)
    y = jnp.dot(x.astype(dtype), kernel, precision=precision_for(dtype))
    return y if conv.bias is None else y + conv.bias[...].astype(dtype)


class ConvTranspose2x2(nnx.Module):
    """torch.nn.ConvTranspose2d(kernel_size=2, stride=2): each input pixel paints a 2x2 block.

    With stride == kernel size the blocks never overlap, so an einsum is exact and avoids the
    kernel-flip conventions of general transposed convolutions. Kernel layout: (in, out, 2, 2),
    the same as torch.
    """

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs, dtype=None):
        # torch computes fan_in for ConvTranspose from weight.size(1) * k * k = out * 4.
        init = _uniform_init(out_channels * 4)
        self.kernel = nnx.Param(init(rngs.params(), (in_channels, out_channels, 2, 2)))
        self.bias = nnx.Param(init(rngs.params(), (out_channels,)))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        b, h, w, _ = x.shape
        y = jnp.einsum(
            "bhwc,cokl->bhkwlo",
            x.astype(dtype),
            self.kernel[...].astype(dtype),
            precision=precision_for(dtype),
        )
        y = y.reshape(b, 2 * h, 2 * w, -1)
        return y + self.bias[...].astype(dtype)


class Embedding(nnx.Module):
    """torch.nn.Embedding used as a bag of learned vectors (SAM only reads `.weight`)."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, param_type=nnx.Param):
        self.embedding = param_type(jax.random.normal(rngs.params(), (num, dim)))

    @property
    def weight(self) -> jax.Array:
        return self.embedding[...]


class MLPBlock(nnx.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act=gelu, *, rngs: nnx.Rngs, dtype=None):
        self.lin1 = Linear(embedding_dim, mlp_dim, rngs=rngs, dtype=dtype)
        self.lin2 = Linear(mlp_dim, embedding_dim, rngs=rngs, dtype=dtype)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(self.act(self.lin1(x)))
