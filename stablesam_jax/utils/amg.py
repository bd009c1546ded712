"""Helpers for automatic mask generation (`segment_anything/utils/amg.py`), split by where they run.

Host (numpy): point grids, crop boxes, RLE encoding, small-region cleanup (scipy instead of cv2).
Device (jax.numpy, fixed shapes): stability scores, mask-to-box, box IoU and a greedy NMS over a
padded candidate set whose validity is a mask, so the compiled programs never depend on how many
masks survive a filter.

Every device function reproduces the official arithmetic: stability is |logits > t + o| /
|logits > t - o| (0/0 = NaN, which no threshold passes), boxes are inclusive pixel indices
(x0, y0, x1, y1) with [0, 0, 0, 0] for an empty mask, and NMS uses torchvision's box IoU on those
integer corners (area (x1 - x0) * (y1 - y0)) and suppresses when IoU > threshold.
"""

from __future__ import annotations

import math
from itertools import product

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from ..modeling.ops import torch_linear_resize_matrix

# ----------------------------------------------------------------------------- host: grids, crops


def build_point_grid(n_per_side: int) -> np.ndarray:
    """[n * n, 2] (x, y) points evenly spaced in [0, 1] x [0, 1], row by row."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def layer_point_grids(
    points_per_side: int | None,
    point_grids: list[np.ndarray] | None,
    crop_n_layers: int,
    downscale_factor: int,
) -> list[np.ndarray]:
    """The generator's point grids: one normalized [N, 2] grid per crop layer, built from
    `points_per_side` or checked if given; errors say what to fix."""
    if (points_per_side is None) == (point_grids is None):
        raise ValueError("give exactly one of points_per_side and point_grids")
    if crop_n_layers < 0:
        raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
    if points_per_side is not None:
        if points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        if downscale_factor < 1:
            raise ValueError("crop_n_points_downscale_factor must be >= 1")
        grids = build_all_layer_point_grids(points_per_side, crop_n_layers, downscale_factor)
        if any(len(g) == 0 for g in grids):
            raise ValueError(
                f"points_per_side={points_per_side} downscaled by "
                f"{downscale_factor} per layer leaves no points in layer "
                f"{crop_n_layers}: use fewer crop layers or a smaller downscale factor"
            )
        return grids
    grids = [np.asarray(g, np.float64) for g in point_grids]
    if len(grids) < crop_n_layers + 1:
        raise ValueError(
            f"point_grids has {len(grids)} grids; crop_n_layers="
            f"{crop_n_layers} needs one per layer ({crop_n_layers + 1})"
        )
    for i, g in enumerate(grids):
        if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
            raise ValueError(f"point_grids[{i}] must be [N, 2] (N >= 1), got {g.shape}")
        if not np.all((g >= 0) & (g <= 1)):
            raise ValueError(f"point_grids[{i}] must be normalized to [0, 1]")
    return grids


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes: the whole image, then (2 ** (i + 1)) ** 2 overlapping crops in layer i."""
    crop_boxes, layer_idxs = [[0, 0, im_size[1], im_size[0]]], [0]
    im_h, im_w = im_size
    short_side = min(im_h, im_w)

    def crop_len(orig_len, n_crops, overlap):
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def box_xyxy_to_xywh(box) -> list:
    x0, y0, x1, y1 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def upscale_matrices(
    low_res: int, img_size: int, input_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """[out_h, low_res] and [out_w, low_res] matrices doing what `Sam.postprocess_masks` does
    (bilinear to img_size, crop to input_size, bilinear to out_size) in one product per axis.

    Bilinear resizes and crops are linear maps per axis, so the chain composes exactly (in float64
    here); a mask is then `ry @ logits @ rx.T`, and zero rows padding the matrices to a bucket
    size give a fixed output shape for every image in that bucket."""
    mats = []
    for axis in (0, 1):
        up = torch_linear_resize_matrix(low_res, img_size).astype(np.float64)[: input_size[axis]]
        down = torch_linear_resize_matrix(input_size[axis], out_size[axis]).astype(np.float64)
        mats.append((down @ up).astype(np.float32))
    return mats[0], mats[1]


# ----------------------------------------------------------------------------- host: RLE


def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of one HxW bool mask (column-major runs, starting with zeros)."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [h * w]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    return flat.reshape(w, h).T


def area_from_rle(rle: dict) -> int:
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(uncompressed_rle: dict) -> dict:
    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")  # JSON-serializable, as the official
    return rle


# ----------------------------------------------------------------------------- host: cleanup


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fills holes ("holes") or drops islands ("islands") smaller than area_thresh pixels, with
    8-connectivity like the official cv2 version. Returns (mask, whether it changed)."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = np.asarray(mask, bool) ^ correct_holes
    regions, n_labels = ndimage.label(working, structure=np.ones((3, 3), bool))
    sizes = np.bincount(regions.ravel(), minlength=n_labels + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill_labels = [0, *small]
    if not correct_holes:
        fill_labels = [i for i in range(n_labels + 1) if i not in fill_labels]
        if not fill_labels:  # every island is small: keep the largest
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True


def masks_to_boxes_np(masks: np.ndarray) -> np.ndarray:
    """Host twin of `masks_to_boxes` for a few masks [K, H, W] -> int [K, 4]."""
    out = np.zeros((len(masks), 4), np.int64)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            out[i] = [cols[0], rows[0], cols[-1], rows[-1]]
    return out


# ----------------------------------------------------------------------------- device


def stability_scores(logits: jax.Array, threshold, offset) -> jax.Array:
    """[..., H, W] logits -> [...] IoU of the masks thresholded at threshold +- offset."""
    high = jnp.sum(logits > threshold + offset, axis=(-2, -1), dtype=jnp.int32)
    low = jnp.sum(logits > threshold - offset, axis=(-2, -1), dtype=jnp.int32)
    return high.astype(jnp.float32) / low.astype(jnp.float32)


def masks_to_boxes(masks: jax.Array) -> jax.Array:
    """[..., H, W] bool -> [..., 4] int32 inclusive XYXY box, [0, 0, 0, 0] for an empty mask."""
    h, w = masks.shape[-2:]
    rows = jnp.any(masks, axis=-1)
    cols = jnp.any(masks, axis=-2)
    ys, xs = jnp.arange(h, dtype=jnp.int32), jnp.arange(w, dtype=jnp.int32)
    top = jnp.min(jnp.where(rows, ys, h), axis=-1)
    bottom = jnp.max(jnp.where(rows, ys, -1), axis=-1)
    left = jnp.min(jnp.where(cols, xs, w), axis=-1)
    right = jnp.max(jnp.where(cols, xs, -1), axis=-1)
    box = jnp.stack([left, top, right, bottom], axis=-1)
    return jnp.where(jnp.any(rows, axis=-1)[..., None], box, 0)


def box_iou_row(box: jax.Array, boxes: jax.Array) -> jax.Array:
    """IoU of one XYXY box [4] with boxes [N, 4], as torchvision (NaN when both areas are 0)."""
    box, boxes = box.astype(jnp.float32), boxes.astype(jnp.float32)
    lt = jnp.maximum(box[:2], boxes[:, :2])
    rb = jnp.minimum(box[2:], boxes[:, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def greedy_nms(
    boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS over a padded set: boxes [N, 4], scores [N], valid [N] bool.

    Returns (keep [N] bool in the input order, order [N]: indices by descending score, valid
    ones first, ties in input order). A box is dropped when its IoU with a kept, higher-scoring
    box exceeds iou_threshold. The loop runs once per valid box, not once per slot."""
    n = boxes.shape[0]
    order = jnp.argsort(jnp.where(valid, -scores.astype(jnp.float32), jnp.inf), stable=True)
    sorted_boxes = boxes[order]
    num_valid = jnp.sum(valid, dtype=jnp.int32)
    later = jnp.arange(n)

    def body(state):
        i, suppressed, keep = state
        kept = ~suppressed[i]
        iou = box_iou_row(sorted_boxes[i], sorted_boxes)
        suppressed = suppressed | (kept & (iou > iou_threshold) & (later > i))
        return i + 1, suppressed, keep.at[i].set(kept)

    _, _, keep_sorted = jax.lax.while_loop(
        lambda state: state[0] < num_valid,
        body,
        (jnp.int32(0), jnp.zeros((n,), bool), jnp.zeros((n,), bool)),
    )
    keep = jnp.zeros((n,), bool).at[order].set(keep_sorted)
    return keep, order


def is_box_near_crop_edge(
    boxes: jax.Array, crop_box: jax.Array, orig_box: jax.Array, atol: float = 20.0
) -> jax.Array:
    """boxes [N, 4] in the crop frame: True where a side lies within atol of the crop's edge
    but not of the image's (such masks are likely cut off by the crop)."""
    boxes = (boxes + jnp.concatenate([crop_box[:2], crop_box[:2]])).astype(jnp.float32)
    near_crop = jnp.abs(boxes - crop_box.astype(jnp.float32)) <= atol
    near_image = jnp.abs(boxes - orig_box.astype(jnp.float32)) <= atol
    return jnp.any(near_crop & ~near_image, axis=-1)
