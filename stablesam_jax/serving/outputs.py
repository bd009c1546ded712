"""The exported decoder's outputs as `SamPredictor` returns them, in jax and numpy only: HQ-SAM's
one mask per prompt, and the masks resized to the original image (torch's bilinear resizes as
matrices)."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Traces per wrapped program (a trace is a compile); tests use it to check bucket reuse.
TRACE_COUNTS: collections.Counter = collections.Counter()


@functools.lru_cache(maxsize=64)
def _linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """torch bilinear (align_corners=False, no antialias) along one axis, as a matrix."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m


def postprocess_matrices(low_res: int, img_size: int, input_size, original_size):
    """Per-axis matrices for upscale-to-img_size, crop-to-input_size, resize-to-original."""
    out = []
    for axis in (0, 1):
        up = _linear_resize_matrix(low_res, img_size)[: input_size[axis]]
        down = _linear_resize_matrix(input_size[axis], original_size[axis])
        out.append((down @ up).astype(np.float32))
    return out


@jax.jit
def postprocess(low_res, ry, rx):
    TRACE_COUNTS["postprocess"] += 1
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("nmlk,wk->nmlw", low_res, rx, precision=hi)
    return jnp.einsum("hl,nmlw->nmhw", ry, x, precision=hi)


@functools.partial(jax.jit, static_argnames=("multimask_output", "hq_token_only"))
def select_hq(low_res, iou, multimask_output, hq_token_only):
    """HQ-SAM's one mask per prompt from the decoder's five (SAM's four, then the HQ mask), as
    `MaskDecoderHQ.__call__` with a bool `multimask_output` (the model code is not importable
    here): SAM's mask 0, or its best of 1-3 by IoU, plus the HQ mask; the HQ mask alone with
    hq_token_only. The IoU is SAM's, of the chosen mask."""
    TRACE_COUNTS["select_hq"] += 1
    hq = low_res[:, 4:5]
    if multimask_output:
        best = jnp.argmax(iou[:, 1:], axis=1)  # first of equal maxima, as the model
        iou = jnp.take_along_axis(iou[:, 1:], best[:, None], axis=1)
        sam = jnp.take_along_axis(low_res[:, 1:4], best[:, None, None, None], axis=1)
    else:
        iou, sam = iou[:, :1], low_res[:, :1]
    return (hq if hq_token_only else sam + hq), iou
