"""The deformable sampling plugin's array math in the form XLA runs fast (docs/design.md, "Stable-SAM
as built"): bilinear sampling as row gathers, and the 5x5 depthwise convolution as shifted sums.

`ops.bilinear_sample` stays the plain per-example sampler; these compute the same values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def bilinear_corners(positions: jax.Array, hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Fractional (y, x) cell positions [..., 2] on an H x W map -> the four corners' row-major
    flat indices [..., 4] (int32, clipped into the map) and bilinear weights [..., 4] (float32,
    0 for a corner outside the map: zero padding, so near the border they sum to less than 1).

    The corner order and weight products are those of `ops.bilinear_sample`, so integer positions
    give weights of exactly 1 and 0."""
    h, w = hw
    y, x = positions[..., 0], positions[..., 1]
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy1, wx1 = y - y0, x - x0
    wy = (1.0 - wy1, wy1)
    wx = (1.0 - wx1, wx1)
    y0i, x0i = y0.astype(jnp.int32), x0.astype(jnp.int32)
    indices, weights = [], []
    for dy, dx in _CORNERS:
        yi, xi = y0i + dy, x0i + dx
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        indices.append(jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1))
        weights.append(jnp.where(inside, wy[dy] * wx[dx], 0.0))
    return jnp.stack(indices, -1), jnp.stack(weights, -1)


def gather_bilinear(rows: jax.Array, indices: jax.Array, weights: jax.Array) -> jax.Array:
    """rows [N, C] (a flattened map, or several stacked), indices/weights [..., 4] from
    `bilinear_corners` (offset into the stack) -> sum_k weights[..., k] * rows[indices[..., k]].

    One row gather per corner: XLA fuses them with the weighted sum into one loop, where a single
    gather of all four corners materializes a [..., 4, C] array first (about ten times slower on
    a CPU)."""
    weights = weights.astype(rows.dtype)

    def corner(k: int) -> jax.Array:
        picked = rows.at[indices[..., k]].get(mode="promise_in_bounds")
        return picked * weights[..., k, None]

    out = corner(0)
    for k in range(1, indices.shape[-1]):
        out = out + corner(k)
    return out


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
