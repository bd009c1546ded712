"""The deformable sampling plugin's array math in the form XLA runs fast (docs/design.md, "Stable-SAM
as built"): bilinear sampling as row gathers (the 5x5 depthwise convolution's fast form is
`common.depthwise_conv_same`, shared with TinyViT).

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
