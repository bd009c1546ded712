"""Small pure functions for the tricky math: windows, relative positions, resizing, sampling.

All take and return arrays for ONE example unless a leading batch axis is named in the shape
comment; callers `vmap` them. None of them holds parameters.
"""

from __future__ import annotations

import functools
from typing import Literal, cast

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
        logits = logits + rel_h[..., :, None] + cast(jax.Array, rel_w)[..., None, :]
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
    q, k, v: [B, heads, N, C]; rel_h/rel_w from `decomposed_rel_pos_terms`; returns
    [B, heads, N, C]. implementation: as `jax.nn.dot_product_attention` ("cudnn", "xla", None).
    The fast path (`rel_pos_attention`) calls the same fold in the kernel's own token-major
    layout and skips these transposes.
    """
    b, n_heads, n, _ = q.shape
    h, w = hw

    def token_major(x):
        return x.transpose(0, 2, 1, 3)

    out = _folded_attention_bnhc(
        token_major(q),
        token_major(k),
        token_major(v),
        scale,
        rel_h.reshape(b, n_heads, n, h).transpose(0, 2, 1, 3),
        rel_w.reshape(b, n_heads, n, w).transpose(0, 2, 1, 3),
        hw,
        implementation,
    )
    return token_major(out)


# ----------------------------------------------------------------------------- fast attention
#
# The fast path works in the token-major layout `[B, N, heads, C]` that fused attention kernels
# take, so no head transposes are needed around them.

# Backends of `rel_pos_attention`: XLA with the bias added to materialized logits (what runs best
# where no fused kernel exists), or the fold through `jax.nn.dot_product_attention` (cuDNN or
# XLA's implementation).
REL_POS_ATTENTION_BACKENDS = ("xla_bias", "xla_folded", "cudnn_folded")


def folded_head_dim(head_dim: int, hw: tuple[int, int]) -> int:
    """Head dim of the folded q/k: head_dim + H + W, rounded up to a multiple of 8 (cuDNN)."""
    return _round_up(head_dim + hw[0] + hw[1], 8)


def cudnn_attention_head_dim_limit(device=None) -> int:
    """Largest q/k head dim cuDNN flash attention takes on `device`; 0 where it does not run.

    cuDNN flash attention needs an NVIDIA GPU of compute capability >= 8.0, and head dims of
    at most 128 (256 from Hopper, compute capability 9.0, on)."""
    device = device or jax.devices()[0]
    capability = getattr(device, "compute_capability", None)
    if device.platform != "gpu" or capability is None:
        return 0
    major = int(str(capability).split(".")[0])
    if major < 8:
        return 0
    return 256 if major >= 9 else 128


def choose_rel_pos_backend(dtype, head_dim: int, hw: tuple[int, int], device=None) -> str:
    """The fastest correct backend for one attention shape on `device` (default: the first).

    cuDNN's fused kernel takes only 16-bit inputs and bounded head dims; elsewhere logits are
    materialized anyway (XLA), so the fold would only add work and the bias is added instead."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    limit = cudnn_attention_head_dim_limit(device)
    if half and folded_head_dim(head_dim, hw) <= limit:
        return "cudnn_folded"
    return "xla_bias"


def rel_pos_tables(
    rel_pos_h: jax.Array, rel_pos_w: jax.Array, hw: tuple[int, int], dtype
) -> tuple[jax.Array, jax.Array]:
    """Per (query, key) row and column embeddings [H, H, C], [W, W, C] in the compute dtype."""
    h, w = hw
    return get_rel_pos(h, h, rel_pos_h).astype(dtype), get_rel_pos(w, w, rel_pos_w).astype(dtype)


def rel_pos_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_pos_h: jax.Array | None,
    rel_pos_w: jax.Array | None,
    hw: tuple[int, int],
    scale: float,
    backend: str = "xla_bias",
    max_logits_bytes: int | None = None,
) -> jax.Array:
    """Attention with SAM's decomposed relative positions, fast path: q, k, v [B, N, heads, C]
    (N = H * W tokens in row-major order) -> [B, N, heads, C]; same math as
    `decomposed_rel_pos_terms` + `attention_with_rel_pos` (softmax statistics in fp32).

    rel_pos_h / rel_pos_w: the raw tables [2H-1, C] / [2W-1, C], or both None for plain
    attention. max_logits_bytes ("xla_bias" only): materialize at most about this many bytes of
    float32 logits at a time, looping over windows or over rows of queries; on a CPU
    cache-sized pieces (`CPU_MAX_LOGITS_BYTES`) halve the time of SAM's attention."""
    if backend not in REL_POS_ATTENTION_BACKENDS:
        raise ValueError(f"backend must be one of {REL_POS_ATTENTION_BACKENDS}, got {backend!r}")
    b, n, n_heads, c = q.shape
    h, w = hw
    if n != h * w:
        raise ValueError(f"{n} tokens do not form the {h}x{w} grid")
    prec = precision_for(q.dtype)
    rel_h: jax.Array | None = None
    rel_w: jax.Array | None = None
    if rel_pos_h is not None:
        rh, rw = rel_pos_tables(rel_pos_h, cast(jax.Array, rel_pos_w), hw, q.dtype)
        q_grid = q.reshape(b, h, w, n_heads, c)
        # [B, H, W, heads, key row] and [B, H, W, heads, key column]
        rel_h = jnp.einsum("byxnc,ykc->byxnk", q_grid, rh, precision=prec)
        rel_w = jnp.einsum("byxnc,xkc->byxnk", q_grid, rw, precision=prec)
    if backend == "xla_bias":
        # Heads-first operands: with token-major ones XLA's CPU layout assignment transposes the
        # whole [heads, N, N] weight matrix for the second product.
        qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
        if rel_h is not None:
            rel_h = rel_h.transpose(0, 3, 1, 2, 4)
            rel_w = cast(jax.Array, rel_w).transpose(0, 3, 1, 2, 4)
        out = _chunked_bias_attention(qh, kh, vh, scale, rel_h, rel_w, hw, max_logits_bytes)
        return out.transpose(0, 2, 1, 3)
    implementation: Literal["xla", "cudnn"] = "cudnn" if backend == "cudnn_folded" else "xla"
    if rel_h is None:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation)
    return _folded_attention_bnhc(
        q,
        k,
        v,
        scale,
        rel_h.reshape(b, n, n_heads, h),
        cast(jax.Array, rel_w).reshape(b, n, n_heads, w),
        hw,
        implementation,
    )


# About the last-level cache of a server CPU: logits chunks of this size stay in cache between
# the products, the bias, and the softmax passes (measured best on a 32 MB-L3 EPYC).
CPU_MAX_LOGITS_BYTES = 32 * 2**20


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(limit, 1))


def _bias_attention(qh, kh, vh, scale, rel_h, rel_w):
    """qh [B, heads, R*W, C] (R query rows), kh/vh [B, heads, H*W, C], rel_h [B, heads, R, W, H],
    rel_w [B, heads, R, W, W] (or None) -> [B, heads, R*W, C]."""
    prec = precision_for(qh.dtype)
    logits = jnp.einsum(
        "bnqc,bnkc->bnqk", qh * scale, kh, precision=prec, preferred_element_type=jnp.float32
    )
    if rel_h is not None:
        b, n_heads, rows, w, h = rel_h.shape
        logits = logits.reshape(b, n_heads, rows, w, h, w)
        logits = (
            logits
            + rel_h[..., :, None].astype(jnp.float32)
            + rel_w[..., None, :].astype(jnp.float32)
        )
        logits = logits.reshape(b, n_heads, rows * w, h * w)
    weights = jax.nn.softmax(logits, axis=-1).astype(vh.dtype)
    return jnp.einsum("bnqk,bnkc->bnqc", weights, vh, precision=prec)


def _chunked_bias_attention(qh, kh, vh, scale, rel_h, rel_w, hw, max_logits_bytes):
    """`_bias_attention` over all queries, in pieces of at most `max_logits_bytes` of logits:
    whole sequences (windows) at a time when one fits, else rows of queries."""
    b, n_heads, n, c = qh.shape
    h, w = hw
    per_sequence = n_heads * n * n * 4
    if max_logits_bytes is None:
        return _bias_attention(qh, kh, vh, scale, rel_h, rel_w)
    if per_sequence <= max_logits_bytes:
        per_chunk = _largest_divisor_at_most(b, max_logits_bytes // per_sequence)
        if per_chunk == b:
            return _bias_attention(qh, kh, vh, scale, rel_h, rel_w)

        def split(x):
            return None if x is None else x.reshape(b // per_chunk, per_chunk, *x.shape[1:])

        out = jax.lax.map(
            lambda xs: _bias_attention(xs[0], xs[1], xs[2], scale, xs[3], xs[4]),
            (split(qh), split(kh), split(vh), split(rel_h), split(rel_w)),
        )
        return out.reshape(b, n_heads, n, c)
    rows = _largest_divisor_at_most(h, max_logits_bytes // (n_heads * w * n * 4))
    if rows == h:
        return _bias_attention(qh, kh, vh, scale, rel_h, rel_w)

    def split_rows(x):  # [B, heads, H, ...] -> [H / rows, B, heads, rows, ...]
        if x is None:
            return None
        x = x.reshape(b, n_heads, h // rows, rows, *x.shape[3:])
        return jnp.moveaxis(x, 2, 0)

    q_rows = split_rows(qh.reshape(b, n_heads, h, w, c))
    out = jax.lax.map(
        lambda xs: _bias_attention(
            xs[0].reshape(b, n_heads, rows * w, c), kh, vh, scale, xs[1], xs[2]
        ),
        (q_rows, split_rows(rel_h), split_rows(rel_w)),
    )  # [H / rows, B, heads, rows * W, C]
    return jnp.moveaxis(out, 0, 2).reshape(b, n_heads, n, c)


def _folded_attention_bnhc(q, k, v, scale, rel_h, rel_w, hw, implementation):
    """The fold on [B, N, heads, C] inputs; rel_h [B, N, heads, H], rel_w [B, N, heads, W]."""
    b, n, n_heads, c = q.shape
    h, w = hw
    d = folded_head_dim(c, hw)
    key_rows = np.repeat(np.arange(h), w)  # row of each key, row-major token order
    key_cols = np.tile(np.arange(w), h)
    key_ext: np.ndarray | jax.Array = np.zeros((n, d - c), np.float32)
    key_ext[np.arange(n), key_rows] = 1.0
    key_ext[np.arange(n), h + key_cols] = 1.0
    key_ext = jnp.broadcast_to(jnp.asarray(key_ext, k.dtype)[None, :, None], (b, n, n_heads, d - c))
    zeros = jnp.zeros((b, n, n_heads, d - c - h - w), q.dtype)
    q_ext = jnp.concatenate([q * jnp.asarray(scale, q.dtype), rel_h, rel_w, zeros], axis=-1)
    k_ext = jnp.concatenate([k, key_ext], axis=-1)
    # jax.nn.dot_product_attention wants one head dim for q, k and v: zero columns of v add
    # nothing and are sliced off.
    v_ext = jnp.pad(v, [(0, 0)] * 3 + [(0, d - c)])
    out = jax.nn.dot_product_attention(
        q_ext, k_ext, v_ext, scale=1.0, implementation=implementation
    )
    return out[..., :c]


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
