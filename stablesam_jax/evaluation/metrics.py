"""Mask IoU, boundary IoU and the Stable-SAM stability score (mSF).

Pure numpy/scipy so the evaluation loop and data-loader workers can use it without importing JAX.
All functions take boolean-like masks [H, W] (or stacks [B, H, W]) in the same frame.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def _as_bool(mask) -> np.ndarray:
    return np.asarray(mask, dtype=bool)


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")


def mask_iou(pred, gt) -> float:
    """|pred & gt| / |pred | gt|; two empty masks agree perfectly, so they score 1.0."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    _check_same_shape(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def mask_iou_batch(preds, gt) -> np.ndarray:
    """IoU of each of B predictions [B, H, W] against one ground truth [H, W] -> float64 [B]."""
    preds, gt = _as_bool(preds), _as_bool(gt)
    _check_same_shape(preds, gt)
    # A Python loop over flat counts: count_nonzero(axis=...) is ~20x slower on megapixel masks.
    gt_area = np.count_nonzero(gt)
    inter = np.array([np.count_nonzero(p & gt) for p in preds], dtype=np.float64)
    union = np.array([np.count_nonzero(p) for p in preds], dtype=np.float64) + gt_area - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_width(image_hw: tuple[int, int], dilation_ratio: float = 0.02) -> int:
    """Boundary band width in pixels: round(ratio * image diagonal), at least 1 (HQ-SAM's rule).

    Python's round (half to even) on purpose: it is what HQ-SAM's `mask_to_boundary` uses.
    """
    height, width = image_hw
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def mask_boundary(mask, width: int) -> np.ndarray:
    """mask AND NOT erode(mask), erode = `width` iterations of a 3x3 square erosion.

    HQ-SAM zero-pads the mask by one pixel before eroding, so pixels near the image border count as
    boundary. Iterating a 3x3 square erosion `width` times equals one erosion by a (2w+1) square,
    which is separable into two 1-D running minima; scipy's running minimum costs O(1) per pixel
    whatever the window, which keeps this fast on multi-megapixel masks. Treating everything outside
    the array as 0 (mode="constant", cval=0) reproduces the zero padding: the nearest outside pixel
    of any border pixel is the padding ring itself.
    """
    mask = _as_bool(mask)
    boundary = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return boundary
    cols = np.flatnonzero(mask.any(axis=0))
    # Everything outside the mask's bounding box is 0 or outside the image, both of which erode the
    # same way, so the erosion only needs the box: a large saving for small objects.
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop = mask[window].view(np.uint8)
    size = 2 * width + 1
    eroded = ndimage.minimum_filter1d(crop, size, axis=0, mode="constant", cval=0)
    eroded = ndimage.minimum_filter1d(eroded, size, axis=1, mode="constant", cval=0)
    boundary[window] = mask[window] & ~eroded.view(bool)
    return boundary


def _band_iou(band_a: np.ndarray, band_b: np.ndarray) -> float:
    union = np.count_nonzero(band_a | band_b)
    if union == 0:
        return 1.0
    return np.count_nonzero(band_a & band_b) / union


def boundary_iou(pred, gt, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al. 2021, as computed by HQ-SAM): IoU of the two boundary bands.

    The band width comes from the ground truth's image size; two empty bands score 1.0.
    """
    pred, gt = _as_bool(pred), _as_bool(gt)
    _check_same_shape(pred, gt)
    width = boundary_width(gt.shape, dilation_ratio)
    return _band_iou(mask_boundary(pred, width), mask_boundary(gt, width))


def boundary_iou_batch(preds, gt, dilation_ratio: float = 0.02) -> np.ndarray:
    """Boundary IoU of each prediction [B, H, W] against one ground truth; its band computed once."""
    preds, gt = _as_bool(preds), _as_bool(gt)
    _check_same_shape(preds, gt)
    width = boundary_width(gt.shape, dilation_ratio)
    gt_band = mask_boundary(gt, width)
    return np.array([_band_iou(mask_boundary(p, width), gt_band) for p in preds], dtype=np.float64)


def stability_score(masks) -> float:
    """The paper's mSF for B masks [B, H, W] of one object: mean_i IoU(M_i, union_j M_j).

    Since M_i is inside the union, IoU(M_i, union) = |M_i| / |union|. All-empty masks are perfectly
    consistent, so they score 1.0.
    """
    masks = _as_bool(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected a stack of masks [B, H, W], got shape {masks.shape}")
    union = np.count_nonzero(masks.any(axis=0))
    if union == 0:
        return 1.0
    return float(np.mean([np.count_nonzero(m) for m in masks]) / union)


BOX_CUT_KEYS = ("cut", "cut_found", "kept", "kept_found", "spill")


def box_cut_counts(masks, gt, box) -> np.ndarray:
    """Pixel counts that say how a mask answers a box prompt that does not frame the object:
    masks [B, H, W] (or [H, W]) against the GT [H, W] and the box (x0, y0, x1, y1; inclusive
    pixel indices, SAM's frame) -> int64 [B, 5] in BOX_CUT_KEYS order: the target outside the
    box ("cut"), the part of it the mask covers ("cut_found"), the target inside the box
    ("kept"), the part of that the mask covers ("kept_found"), and the mask outside the target
    ("spill")."""
    masks, gt = _as_bool(masks), _as_bool(gt)
    _check_same_shape(masks, gt)
    masks = masks.reshape(-1, *gt.shape)
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).reshape(4)
    rows, cols = np.arange(gt.shape[0]), np.arange(gt.shape[1])
    inside = ((rows >= y0) & (rows <= y1))[:, None] & ((cols >= x0) & (cols <= x1))[None, :]
    cut, kept = gt & ~inside, gt & inside
    return np.array(
        [
            [
                np.count_nonzero(cut),
                np.count_nonzero(mask & cut),
                np.count_nonzero(kept),
                np.count_nonzero(mask & kept),
                np.count_nonzero(mask & ~gt),
            ]
            for mask in masks
        ],
        dtype=np.int64,
    )


def box_cut_summary(counts) -> dict[str, float | None]:
    """Pooled `box_cut_counts` rows [N, 5] -> percentages: "cut_share" (of the target, outside
    the box), "recall_outside" and "recall_inside" the box (of the target there; None where
    there is none), "spill" (mask pixels outside the target, per target pixel)."""
    cut, cut_found, kept, kept_found, spill = np.asarray(counts, np.float64).reshape(-1, 5).sum(0)
    target = cut + kept
    return {
        "cut_share": 100.0 * cut / target if target else None,
        "recall_outside": 100.0 * cut_found / cut if cut else None,
        "recall_inside": 100.0 * kept_found / kept if kept else None,
        "spill": 100.0 * spill / target if target else None,
    }
