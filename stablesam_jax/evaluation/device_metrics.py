"""The metrics' pixel counts on the device, so only counts come back to the host.

The HQ sets' multi-megapixel masks would otherwise cost ~0.1 s of host CPU per mask for the
boundary IoU alone. `metric_counts` upsamples and thresholds a decoder's low-res logits and counts
pixels; `metrics_from_counts` turns the counts into exactly `metrics`' values (tests pin the
equality). Everything here is a function of sizes only, so all models share one compilation per
original image size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..modeling import ops
from ..modeling.sam import Sam


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def masks_at_original_size(img_size, low_res, input_size, original_size):
    """`Sam.postprocess_masks` (same ops, same order) thresholded at `Sam.mask_threshold`.

    A function of sizes only, so all models share one compilation per image size (there are as
    many sizes as images in the HQ sets); a test pins it to `postprocess_masks`.
    """
    logits = ops.resize_bilinear(low_res, (img_size, img_size))
    logits = logits[..., : input_size[0], : input_size[1]]
    return ops.resize_bilinear(logits, tuple(original_size)) > Sam.mask_threshold


def window_min(x: jax.Array, size: int, axis: int) -> jax.Array:
    """Running minimum over `size` consecutive entries along `axis` (output shorter by size - 1).

    Doubling (a sparse table): O(log size) elementwise passes, where `lax.reduce_window` would
    read every window element (a ~200-pixel band on a 4K image makes that slow on a GPU).
    """
    span, table = 1, x
    while 2 * span <= size:
        length = table.shape[axis] - span
        table = jnp.minimum(
            jax.lax.slice_in_dim(table, 0, length, axis=axis),
            jax.lax.slice_in_dim(table, span, span + length, axis=axis),
        )
        span *= 2
    out = x.shape[axis] - size + 1
    rest = size - span
    return jnp.minimum(
        jax.lax.slice_in_dim(table, 0, out, axis=axis),
        jax.lax.slice_in_dim(table, rest, rest + out, axis=axis),
    )


def boundary_band(masks: jax.Array, width: int) -> jax.Array:
    """`metrics.mask_boundary` on device: mask AND NOT its (2w+1)-square erosion, outside = 0."""
    x = masks.astype(jnp.uint8)
    size = 2 * width + 1
    pad = [(0, 0)] * x.ndim
    for axis in (x.ndim - 2, x.ndim - 1):
        pad_axis = list(pad)
        pad_axis[axis] = (width, width)
        x = window_min(jnp.pad(x, pad_axis), size, axis)
    return masks & (x == 0)


def mask_counts(masks: jax.Array, gt: jax.Array, width: int) -> dict[str, jax.Array]:
    """Pixel counts from which `metrics` derives IoU, boundary IoU and stability exactly."""
    axes = (-2, -1)
    pred_band, gt_band = boundary_band(masks, width), boundary_band(gt, width)
    return {
        "inter": jnp.sum(masks & gt, axis=axes),
        "area": jnp.sum(masks, axis=axes),
        "gt_area": jnp.sum(gt),
        "band_inter": jnp.sum(pred_band & gt_band, axis=axes),
        "band_union": jnp.sum(pred_band | gt_band, axis=axes),
        # Padded rows repeat a real row, so they leave the union of all masks unchanged.
        "union_all": jnp.sum(jnp.any(masks, axis=0)),
    }


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def metric_counts(img_size, low_res, input_size, original_size, width, gt):
    """`mask_counts` of the low-res logits' masks at the original size, in one program."""
    masks = masks_at_original_size(img_size, low_res, input_size, original_size)
    return mask_counts(masks, gt, width)


def metrics_from_counts(counts: Mapping[str, np.ndarray], count: int) -> dict[str, float]:
    """Per-image mIoU / mBIoU / mSF (0-100) from `mask_counts` of the first `count` rows, with
    `metrics`' conventions: an empty union scores 1."""
    inter = np.asarray(counts["inter"], np.float64)[:count]
    area = np.asarray(counts["area"], np.float64)[:count]
    union = area + float(counts["gt_area"]) - inter
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    band_inter = np.asarray(counts["band_inter"], np.float64)[:count]
    band_union = np.asarray(counts["band_union"], np.float64)[:count]
    biou = np.where(band_union == 0, 1.0, band_inter / np.maximum(band_union, 1))
    union_all = float(counts["union_all"])
    stability = 1.0 if union_all == 0 else float(np.mean(area) / union_all)
    return {
        "miou": 100.0 * float(np.mean(iou)),
        "mbiou": 100.0 * float(np.mean(biou)),
        "msf": 100.0 * stability,
    }
