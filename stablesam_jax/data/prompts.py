"""Prompt samplers for evaluation and for the robust training strategy (RTS), plus occlusion.

Pure numpy/scipy/PIL (no JAX) so they run inside data-loader worker processes.

Conventions, shared with SAM's `batched_mask_to_box` and torchvision's `masks_to_boxes`:
- boxes are float32 XYXY in pixel coordinates, x1 and y1 the INCLUSIVE max index, so a mask one
  pixel wide has x0 == x1;
- points are float32 (x, y) = (column, row) at integer pixel positions (SAM adds the 0.5 itself);
- point labels are int32, POSITIVE_LABEL for foreground, PAD_LABEL for an unused slot.

Box IoU treats a box as the continuous area [x0, x1] x [y0, y1] (torchvision's `box_iou`), the same
frame the noise is applied in, so a noisy box's IoU is exactly what the bins in `eval_prompts` say.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage

from ..constants import PAD_LABEL, POSITIVE_LABEL

PROMPT_TYPES = (
    "gt_box",
    "noisy_box",
    "noisy_box_50_60",
    "noisy_box_60_70",
    "one_point",
    "three_points",
    "five_points",
    "ten_points",
)

RTS_KINDS = (
    "gt_box",
    "noisy_box",
    "one_point",
    "three_points",
    "five_points",
    "ten_points",
    "coarse_mask",
)

NUM_POINTS = {"one_point": 1, "three_points": 3, "five_points": 5, "ten_points": 10}

# Paper: noise scale 0.4, noisy boxes kept only when their IoU with the GT box is >= 0.5.
NOISE_SCALE = 0.4
MIN_NOISY_BOX_IOU = 0.5
NOISY_BOX_BINS = {"noisy_box_50_60": (0.5, 0.6), "noisy_box_60_70": (0.6, 0.7)}

# SAM reads `mask_input` as low-resolution logits. +-10 is a confident mask (sigmoid ~ 0.99995)
# of the magnitude SAM's own low-res outputs reach, unlike HQ-SAM's raw 0/255, which makes the
# outside "undecided" (logit 0) and the inside absurdly saturated.
COARSE_MASK_LOGIT = 10.0

_CANDIDATES_PER_ROUND = 64


# --------------------------------------------------------------------------------------------------
# Boxes


def mask_to_box(mask) -> np.ndarray:
    """Tight XYXY box (inclusive max index) of a boolean mask [H, W] -> float32 [4]."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise ValueError(
            f"empty mask: cannot derive a box prompt from a mask of shape {mask.shape} with no "
            "foreground pixel; drop the instance (or the crop) before sampling prompts"
        )
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def _box_iou_against(boxes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """IoU of boxes [N, 4] against one box [4], continuous areas; float64 [N]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    reference = np.asarray(reference, dtype=np.float64)
    inter_w = np.minimum(boxes[:, 2], reference[2]) - np.maximum(boxes[:, 0], reference[0])
    inter_h = np.minimum(boxes[:, 3], reference[3]) - np.maximum(boxes[:, 1], reference[1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ref_area = (reference[2] - reference[0]) * (reference[3] - reference[1])
    union = area + ref_area - inter
    identical = np.all(boxes == reference, axis=1)
    # Zero-area boxes (a one-pixel-wide mask's tight box) have no IoU; call equal ones a match.
    safe = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where(union > 0, safe, identical.astype(np.float64))


def box_iou(a, b) -> float:
    """IoU of two XYXY boxes taken as continuous areas [x0, x1] x [y0, y1] (torchvision's rule)."""
    return float(_box_iou_against(np.asarray(a)[None], np.asarray(b))[0])


def _with_extent(box: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Give a zero-width/height box one pixel of extent so noise and IoU are defined for it."""
    box = box.astype(np.float64).copy()
    height, width = image_hw
    for lo, hi, limit in ((0, 2, width - 1), (1, 3, height - 1)):
        if box[hi] - box[lo] >= 1:
            continue
        if limit < 1:
            raise ValueError(f"image {image_hw} is too small to hold a box with x0 < x1, y0 < y1")
        if box[lo] + 1 <= limit:
            box[hi] = box[lo] + 1
        else:
            box[lo] = box[hi] - 1
    return box


def noisy_box(
    box,
    rng: np.random.Generator,
    image_hw: tuple[int, int],
    noise_scale: float = NOISE_SCALE,
    min_iou: float = MIN_NOISY_BOX_IOU,
    iou_range: tuple[float, float] | None = None,
    max_tries: int = 10000,
) -> np.ndarray:
    """The paper's noisy box: each edge moves by U(-1, 1) * noise_scale * (half width or height).

    The box is clipped to the image ([0, W-1] x [0, H-1], the inclusive-index frame of `box`) and
    redrawn until x0 < x1, y0 < y1 and its IoU with `box` is >= `min_iou`, or, when
    `iou_range=(lo, hi)` is given (then `min_iou` is ignored), lo <= IoU < hi.

    Draws come in rounds of 64; the first acceptable one is returned, so typical boxes follow the
    plain rejection-sampling distribution. Only when a whole round fails is the scale adapted:
    widened x1.5 if the round's median IoU was above the target range (e.g. a box filling the image
    cannot grow, so low bins need stronger shrinking), narrowed /1.5 if below it. A box of zero
    width or height (one-pixel-thin mask) is first given one pixel of extent (see `_with_extent`),
    and IoU is measured against that widened box.
    """
    height, width = image_hw
    lo, hi = (min_iou, math.inf) if iou_range is None else iou_range
    if not lo < hi:
        raise ValueError(f"empty IoU range [{lo}, {hi})")
    target = _with_extent(np.asarray(box), image_hw)
    half_sizes = np.array([target[2] - target[0], target[3] - target[1]] * 2) / 2
    scale = noise_scale
    tried = 0
    while tried < max_tries:
        count = min(_CANDIDATES_PER_ROUND, max_tries - tried)
        tried += count
        candidates = target + rng.uniform(-1.0, 1.0, size=(count, 4)) * scale * half_sizes
        candidates[:, 0::2] = np.clip(candidates[:, 0::2], 0, width - 1)
        candidates[:, 1::2] = np.clip(candidates[:, 1::2], 0, height - 1)
        ordered = (candidates[:, 0] < candidates[:, 2]) & (candidates[:, 1] < candidates[:, 3])
        ious = _box_iou_against(candidates, target)
        accepted = ordered & (ious >= lo) & (ious < hi)
        if accepted.any():
            return candidates[np.argmax(accepted)].astype(np.float32)
        median = np.median(ious[ordered]) if ordered.any() else math.inf
        scale = scale * 1.5 if median >= hi else scale / 1.5
    raise RuntimeError(
        f"could not draw a noisy box with IoU in [{lo}, {hi}) around {np.asarray(box).tolist()} "
        f"inside an image of size {image_hw} after {max_tries} tries"
    )


# --------------------------------------------------------------------------------------------------
# Points


def random_points(mask, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n positive points drawn uniformly from the mask's pixels, without replacement if it has >= n.

    Returns coords float32 [n, 2] as (x, y) and labels int32 [n] (all POSITIVE_LABEL).
    """
    flat = np.flatnonzero(np.asarray(mask, dtype=bool))
    if flat.size == 0:
        raise ValueError("empty mask: cannot draw point prompts from a mask with no foreground")
    picks = flat[rng.choice(flat.size, size=n, replace=flat.size < n)]
    rows, cols = np.unravel_index(picks, np.shape(mask))
    coords = np.stack([cols, rows], axis=1).astype(np.float32)
    return coords, np.full(n, POSITIVE_LABEL, dtype=np.int32)


# --------------------------------------------------------------------------------------------------
# Coarse mask


def downsample_fraction(mask, out_size: int) -> np.ndarray:
    """Fraction of each of out_size x out_size cells covered by the mask (area average), float32."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    if height % out_size == 0 and width % out_size == 0:
        cells = mask.reshape(out_size, height // out_size, out_size, width // out_size)
        return cells.mean(axis=(1, 3), dtype=np.float32)
    image = Image.fromarray(mask.astype(np.float32))
    return np.asarray(image.resize((out_size, out_size), Image.BOX), dtype=np.float32)


def coarse_mask(
    mask,
    rng: np.random.Generator,
    out_size: int = 256,
    band_width: int = 3,
    noise_std: float = 1.0,
    blob_sigma: float = 1.0,
) -> np.ndarray:
    """The GT at out_size x out_size with noise only in its boundary band -> bool [out, out].

    As HQ-SAM's `masks_noise` (the Stable-SAM appendix: Gaussian noise in the boundary region): the
    area-averaged GT plus Gaussian noise, thresholded at 0.5. Here the noise is smoothed by
    `blob_sigma` low-res pixels, so errors come as blobs rather than salt and pepper, and applied
    only within `band_width` low-res pixels (Chebyshev) of the boundary. The image border is not a
    boundary: a mask touching it is not frayed there.
    """
    fraction = downsample_fraction(mask, out_size)
    inside = fraction >= 0.5
    square = np.ones((3, 3), dtype=bool)
    grown = ndimage.binary_dilation(inside, square, iterations=band_width)
    shrunk = ndimage.binary_erosion(inside, square, iterations=band_width, border_value=1)
    band = grown & ~shrunk
    noise = rng.standard_normal((out_size, out_size))
    if blob_sigma > 0:
        noise = ndimage.gaussian_filter(noise, blob_sigma)
        noise /= max(float(noise.std()), 1e-12)
    noisy = fraction + noise_std * noise
    return np.where(band, noisy >= 0.5, inside)


# --------------------------------------------------------------------------------------------------
# Synthetic occlusion


def paste_object(image, mask, object_image, object_mask, top_left, mode: str):
    """Paste `object_image` under `object_mask` with its [0, 0] at `top_left` = (row, col).

    The object may hang over the image edges (its outside part is dropped). mode "occluder": the
    object is in front, its pixels replace the image wherever it is and the target loses them.
    mode "occludee": the object is behind the target, so only pixels outside the target change and
    the target mask is unchanged. Returns (image, target_mask, pasted_mask), inputs untouched.
    """
    if mode not in ("occluder", "occludee"):
        raise ValueError(f"mode must be 'occluder' or 'occludee', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    object_mask = np.asarray(object_mask, dtype=bool)
    out = np.array(image, copy=True)
    height, width = mask.shape
    obj_h, obj_w = object_mask.shape
    row, col = top_left
    r0, r1 = max(row, 0), min(row + obj_h, height)
    c0, c1 = max(col, 0), min(col + obj_w, width)
    pasted = np.zeros_like(mask)
    if r0 >= r1 or c0 >= c1:
        return out, mask.copy(), pasted
    source = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
    pasted[r0:r1, c0:c1] = object_mask[source]
    if mode == "occluder":
        written, target = pasted, mask & ~pasted
    else:
        written, target = pasted & ~mask, mask.copy()
    window = out[r0:r1, c0:c1]
    window_written = written[r0:r1, c0:c1]
    window[window_written] = np.asarray(object_image)[source][window_written]
    return out, target, pasted


def _resize(array: np.ndarray, size_hw: tuple[int, int], resample) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size_hw[1], size_hw[0]), resample))


def occlude(
    image,
    mask,
    occluder_image,
    occluder_mask,
    rng: np.random.Generator,
    mode: str,
    relative_scale: tuple[float, float] = (0.3, 1.0),
    min_visible_fraction: float = 0.25,
    max_tries: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """RTS synthetic occlusion: paste an object cut from another sample over or behind the target.

    The object (its pixels under `occluder_mask`, cropped to its box) is rescaled so its box's
    linear size is U(relative_scale) times the target box's, then placed so that a random pixel of
    it lands on a random target pixel: it always overlaps the target unless clipped away. In
    "occluder" mode a placement leaving less than `min_visible_fraction` of the target visible (never
    an empty target) is redrawn at a smaller scale; after `max_tries` the sample is returned
    unoccluded. Returns (image, target_mask); see `paste_object` for the pixel rules.
    """
    if mode not in ("occluder", "occludee"):
        raise ValueError(f"mode must be 'occluder' or 'occludee', got {mode!r}")
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    occluder_mask = np.asarray(occluder_mask, dtype=bool)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} sizes differ")
    target_pixels = np.flatnonzero(mask)
    if target_pixels.size == 0:
        raise ValueError("empty mask: cannot occlude a target that has no foreground")
    if not occluder_mask.any():
        return image.copy(), mask.copy()

    target_box = mask_to_box(mask)
    object_box = mask_to_box(occluder_mask).astype(int)
    crop = (slice(object_box[1], object_box[3] + 1), slice(object_box[0], object_box[2] + 1))
    object_pixels = np.ascontiguousarray(np.asarray(occluder_image)[crop])
    object_mask = np.ascontiguousarray(occluder_mask[crop])
    target_size = math.sqrt(
        (target_box[2] - target_box[0] + 1) * (target_box[3] - target_box[1] + 1)
    )
    object_size = math.sqrt(object_mask.shape[0] * object_mask.shape[1])

    shrink = 1.0
    for _ in range(max_tries):
        factor = shrink * rng.uniform(*relative_scale) * target_size / object_size
        size_hw = (
            max(1, round(object_mask.shape[0] * factor)),
            max(1, round(object_mask.shape[1] * factor)),
        )
        scaled_mask = _resize(object_mask.astype(np.uint8) * 255, size_hw, Image.BILINEAR) >= 128
        if not scaled_mask.any():
            continue
        scaled_pixels = _resize(object_pixels, size_hw, Image.BILINEAR)
        anchor_row, anchor_col = np.unravel_index(rng.choice(target_pixels), mask.shape)
        object_row, object_col = np.unravel_index(
            rng.choice(np.flatnonzero(scaled_mask)), scaled_mask.shape
        )
        top_left = (int(anchor_row - object_row), int(anchor_col - object_col))
        out, target, _ = paste_object(image, mask, scaled_pixels, scaled_mask, top_left, mode)
        visible = np.count_nonzero(target)
        if mode == "occludee" or (visible > 0 and visible >= min_visible_fraction * mask.sum()):
            return out, target
        shrink *= 0.7
    return image.copy(), mask.copy()


# --------------------------------------------------------------------------------------------------
# Evaluation prompt sets


def image_seed(image_key: str, seed: int = 0) -> int:
    """A per-image seed from its name, stable across processes (unlike Python's `hash`)."""
    return zlib.crc32(f"{seed}:{image_key}".encode())


def eval_prompts(
    mask, prompt_type: str, num: int = 20, seed: int = 0, image_hw: tuple[int, int] | None = None
) -> list[dict]:
    """`num` prompts of one PROMPT_TYPES type for one GT mask, reproducible from `seed`.

    Pass a per-image seed (e.g. `image_seed(name)`); the prompt type is mixed in with crc32 so each
    type gets its own stream. `image_hw` (default: the mask's shape) bounds the noisy boxes.
    Each dict: box float32 [4] or None, point_coords float32 [n, 2] or None, point_labels int32 [n]
    or None.
    """
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"unknown prompt type {prompt_type!r}; expected one of {PROMPT_TYPES}")
    mask = np.asarray(mask, dtype=bool)
    image_hw = tuple(mask.shape) if image_hw is None else tuple(image_hw)
    rng = np.random.default_rng([seed, zlib.crc32(prompt_type.encode())])
    prompts = []
    if prompt_type in NUM_POINTS:
        for _ in range(num):
            coords, labels = random_points(mask, NUM_POINTS[prompt_type], rng)
            prompts.append({"box": None, "point_coords": coords, "point_labels": labels})
        return prompts
    gt_box = mask_to_box(mask)
    for _ in range(num):
        if prompt_type == "gt_box":
            box = gt_box.copy()
        else:
            box = noisy_box(gt_box, rng, image_hw, iou_range=NOISY_BOX_BINS.get(prompt_type))
        prompts.append({"box": box, "point_coords": None, "point_labels": None})
    return prompts


# --------------------------------------------------------------------------------------------------
# RTS training prompt


def _normalized_weights(mixture: dict) -> np.ndarray:
    unknown = set(mixture) - set(RTS_KINDS)
    if unknown:
        raise ValueError(f"unknown prompt kinds {sorted(unknown)}; expected some of {RTS_KINDS}")
    weights = np.array([float(mixture.get(kind, 0.0)) for kind in RTS_KINDS])
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {mixture}")
    return weights / weights.sum()


def sample_rts_prompt(
    mask, rng: np.random.Generator, mixture: dict, max_points: int = 10, low_res: int = 256
) -> dict:
    """One RTS prompt of a kind drawn from `mixture`, in fixed shapes so samples batch.

    `mask` is the target in the model's square input frame (e.g. 1024x1024) and must be non-empty.
    Returns kind (int index into RTS_KINDS), box float32 [4] + box_valid, point_coords float32
    [max_points, 2] + point_labels int32 [max_points] (unused slots: coords 0, label PAD_LABEL),
    and mask_input float32 [low_res, low_res] + mask_valid: the coarse mask as logits,
    +COARSE_MASK_LOGIT inside and -COARSE_MASK_LOGIT outside, zeros when unused.
    """
    mask = np.asarray(mask, dtype=bool)
    gt_box = mask_to_box(mask)  # also rejects an empty target, whatever kind is drawn
    kind = int(rng.choice(len(RTS_KINDS), p=_normalized_weights(mixture)))
    name = RTS_KINDS[kind]
    box = np.zeros(4, dtype=np.float32)
    coords = np.zeros((max_points, 2), dtype=np.float32)
    labels = np.full(max_points, PAD_LABEL, dtype=np.int32)
    mask_input = np.zeros((low_res, low_res), dtype=np.float32)
    if name == "gt_box":
        box = gt_box
    elif name == "noisy_box":
        box = noisy_box(gt_box, rng, mask.shape)
    elif name == "coarse_mask":
        coarse = coarse_mask(mask, rng, out_size=low_res)
        mask_input = np.where(coarse, COARSE_MASK_LOGIT, -COARSE_MASK_LOGIT).astype(np.float32)
    else:
        count = NUM_POINTS[name]
        if count > max_points:
            raise ValueError(f"{name} needs {count} point slots but max_points={max_points}")
        coords[:count], labels[:count] = random_points(mask, count, rng)
    return {
        "kind": kind,
        "box": box,
        "box_valid": name in ("gt_box", "noisy_box"),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": mask_input,
        "mask_valid": name == "coarse_mask",
    }
