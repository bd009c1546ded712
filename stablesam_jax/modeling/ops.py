"""Small pure functions for the tricky math: windows, relative positions, resizing, sampling.

All take and return arrays for ONE example unless a leading batch axis is named in the shape
comment; callers `vmap` them. None of them holds parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .common import precision_for

# ----------------------------------------------------------------------------- windows


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
    """[B, H, W, C] -> [B * nH * nW, window, window, C], zero-padding H, W up to a multiple."""
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)
    return x, (hp, wp)


def window_unpartition(
    windows: jax.Array, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`: [B * nH * nW, window, window, C] -> [B, H, W, C]."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


# ----------------------------------------------------------------------------- resizing


@functools.lru_cache(maxsize=64)
def torch_linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] matrix equal to torch `F.interpolate(mode="linear"/"bilinear",
    align_corners=False, antialias=False)` along one axis (half-pixel centres, edge clamp)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)  # torch clamps negative source coordinates to 0
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m.astype(np.float32)


def resize_bilinear(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """[..., H, W] -> [..., out_h, out_w], exactly torch bilinear with align_corners=False."""
    mh = jnp.asarray(torch_linear_resize_matrix(x.shape[-2], out_hw[0]))
    mw = jnp.asarray(torch_linear_resize_matrix(x.shape[-1], out_hw[1]))
    prec = precision_for(x.dtype)
    x = jnp.einsum("oh,...hw->...ow", mh.astype(x.dtype), x, precision=prec)
    return jnp.einsum("pw,...ow->...op", mw.astype(x.dtype), x, precision=prec)


# ----------------------------------------------------------------------------- rel. positions


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative-position table [L, C] -> per (query, key) embeddings [q_size, k_size, C]."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        m = jnp.asarray(torch_linear_resize_matrix(rel_pos.shape[0], max_rel_dist))
        rel_pos = jnp.einsum("ol,lc->oc", m, rel_pos, precision=precision_for(rel_pos.dtype))
    q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.astype(np.int64)]


def decomposed_rel_pos_terms(
    q: jax.Array, rel_pos_h: jax.Array, rel_pos_w: jax.Array, hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """q [B, heads, H*W, C] -> (rel_h [B, heads, H, W, H], rel_w [B, heads, H, W, W]).

    rel_h[..., y, x, ky] is the bias every key in row ky gets from query (y, x); rel_w likewise
    for key columns. MViTv2's decomposition, as in SAM's `add_decomposed_rel_pos`.
    """
    h, w = hw
    rh = get_rel_pos(h, h, rel_pos_h)
    rw = get_rel_pos(w, w, rel_pos_w)
    r_q = q.reshape(*q.shape[:2], h, w, q.shape[-1])
    prec = precision_for(q.dtype)
    rel_h = jnp.einsum("bnhwc,hkc->bnhwk", r_q, rh.astype(q.dtype), precision=prec)
    rel_w = jnp.einsum("bnhwc,wkc->bnhwk", r_q, rw.astype(q.dtype), precision=prec)
    return rel_h, rel_w


def attention_with_rel_pos(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    scale: float,
    rel_h: jax.Array | None,
    rel_w: jax.Array | None,
    hw: tuple[int, int],
) -> jax.Array:
    """Reference attention, the official op order: q,k,v [B, heads, N, C] -> [B, heads, N, C]."""
    prec = precision_for(q.dtype)
    logits = jnp.einsum("bnqc,bnkc->bnqk", q * scale, k, precision=prec)
    if rel_h is not None:
        h, w = hw
        b, n = logits.shape[:2]
        logits = logits.reshape(b, n, h, w, h, w)
        logits = logits + rel_h[..., :, None] + rel_w[..., None, :]
        logits = logits.reshape(b, n, h * w, h * w)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bnqk,bnkc->bnqc", weights, v, precision=prec)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def folded_rel_pos_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    scale: float,
    rel_h: jax.Array,
    rel_w: jax.Array,
    hw: tuple[int, int],
    implementation: str | None = None,
) -> jax.Array:
    """Same result as `attention_with_rel_pos`, through a fused attention kernel, no bias tensor.

    q.k*scale + rel_h[ky] + rel_w[kx] == [q*scale, rel_h, rel_w] . [k, onehot(ky), onehot(kx)],
    so extending the head dimension folds the decomposed bias into the dot product. Head dims
    are zero-padded to a multiple of 8 (what cuDNN wants); zeros change no dot product.
    q, k, v: [B, heads, N, C]; returns [B, heads, N, C].
    """
    b, n_heads, n, c = q.shape
    h, w = hw
    key_rows = jnp.repeat(jnp.arange(h), w)  # [N]: row of each key
    key_cols = jnp.tile(jnp.arange(w), h)  # [N]: column of each key
    onehot_rows = jax.nn.one_hot(key_rows, h, dtype=k.dtype)
    onehot_cols = jax.nn.one_hot(key_cols, w, dtype=k.dtype)
    q_ext = jnp.concatenate(
        [q * scale, rel_h.reshape(b, n_heads, n, h), rel_w.reshape(b, n_heads, n, w)], axis=-1
    )
    k_ext = jnp.concatenate(
        [
            k,
            jnp.broadcast_to(onehot_rows, (b, n_heads, n, h)),
            jnp.broadcast_to(onehot_cols, (b, n_heads, n, w)),
        ],
        axis=-1,
    )
    d = _round_up(q_ext.shape[-1], 8)
    pad = [(0, 0)] * 3 + [(0, d - q_ext.shape[-1])]
    q_ext, k_ext = jnp.pad(q_ext, pad), jnp.pad(k_ext, pad)
    v_ext = jnp.pad(v, [(0, 0)] * 3 + [(0, d - c)])
    # jax.nn.dot_product_attention wants [B, N, heads, D].
    out = jax.nn.dot_product_attention(
        q_ext.transpose(0, 2, 1, 3),
        k_ext.transpose(0, 2, 1, 3),
        v_ext.transpose(0, 2, 1, 3),
        scale=1.0,
        implementation=implementation,
    )
    return out.transpose(0, 2, 1, 3)[..., :c]


# ----------------------------------------------------------------------------- sampling


def bilinear_sample(features: jax.Array, positions: jax.Array) -> jax.Array:
    """Sample one feature map at fractional cell positions, zero outside the map.

    features: [H, W, C]; positions: [..., 2] as (y, x) in cell units, (0, 0) the first cell's
    centre. Returns [..., C]. Integer positions return the stored vectors exactly (corner weights
    are exactly 1 and 0). Equals grid_sample(align_corners=True, padding_mode="zeros") at
    normalized coordinates 2 * p / (size - 1) - 1. Gather based, for ONE example: vmap it.
    """
    h, w, c = features.shape
    flat = features.reshape(h * w, c)
    y, x = positions[..., 0], positions[..., 1]
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy1, wx1 = y - y0, x - x0
    wy0, wx0 = 1.0 - wy1, 1.0 - wx1
    y0i, x0i = y0.astype(jnp.int32), x0.astype(jnp.int32)

    def corner(yi, xi, weight):
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
        weight = jnp.where(inside, weight, 0.0).astype(features.dtype)
        return jnp.take(flat, index, axis=0) * weight[..., None]

    return (
        corner(y0i, x0i, wy0 * wx0)
        + corner(y0i, x0i + 1, wy0 * wx1)
        + corner(y0i + 1, x0i, wy1 * wx0)
        + corner(y0i + 1, x0i + 1, wy1 * wx1)
    )


def reference_grid(h: int, w: int) -> jax.Array:
    """[H, W, 2] integer (y, x) cell coordinates: DSP's reference points p."""
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    return jnp.stack([ys, xs], axis=-1)
