"""The checks of what a caller hands the models: images, prompts and embeddings.

One set of rules for `SamPredictor`, the evaluation predictors, the automatic mask generator and
the serving runtime (numpy only, no flax or model code: the serving runtime uses it too). Every
refusal is an `InputError` (a ValueError) whose message says what was given and what is expected:

- an image is HxWx3 uint8, at least `MIN_IMAGE_SIDE` px on each side, and not so thin that
  resizing its long side to the model's input size leaves the short side empty;
- point labels are 1 (foreground), 0 (background) or -1 (not a point); callers that pad prompt
  batches also allow `PAD_LABEL` (an empty slot);
- coordinates are finite; clicks (labels 1 and 0) and boxes lie inside the image (x in [0, W],
  y in [0, H]); a box has x0 <= x1 and y0 <= y1;
- point sets, boxes and mask inputs come in the same number;
- a mask input has the decoder's low-res size and finite values;
- an embedding comes from a model of the same type, with the feature shape the decoder reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from ..constants import NEGATIVE_LABEL, NOT_A_POINT_LABEL, PAD_LABEL, POSITIVE_LABEL
from .transforms import get_preprocess_shape

MIN_IMAGE_SIDE = 2
POINT_LABELS = (POSITIVE_LABEL, NEGATIVE_LABEL, NOT_A_POINT_LABEL)
# Model types that name no particular model (an embedding that recorded none, a Sam built from
# a bare config): only the feature shape is compared then.
UNNAMED_MODELS = ("unknown", "custom")


class InputError(ValueError):
    """An image, prompt or embedding that cannot mean what the caller wants."""


def validate_image(image, img_size: int | None = None) -> np.ndarray:
    """The image as an HxWx3 uint8 array; `img_size` (the model's input size) also refuses an
    image too thin to survive resizing its long side to that size."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"image must be an HxWx3 array, got shape {image.shape}"
            + (" (convert grayscale/RGBA to RGB first)" if image.ndim in (2, 3) else "")
        )
    if image.dtype != np.uint8:
        raise InputError(
            f"image must be uint8 (0-255) like the official predictor, got {image.dtype}; "
            "use (image * 255).round().astype(np.uint8) for images in [0, 1]"
        )
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(f"image is {h}x{w} (HxW): each side must be at least {MIN_IMAGE_SIDE} px")
    if img_size is not None and min(get_preprocess_shape(h, w, img_size)) < 1:
        long_side = max(h, w)
        raise InputError(
            f"image is {h}x{w} (HxW), too thin for this model: resizing its long side to "
            f"{img_size} px leaves the short side empty; with a {long_side} px long side the "
            f"short side must be at least {math.ceil(long_side / (2 * img_size))} px (crop or pad "
            "the image)"
        )
    return image


def _numbers(value, name: str, dtype=np.float64) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"{name} must be a rectangular array of numbers, got {_describe(value)}"
        ) from error


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_finite(array: np.ndarray, name: str) -> None:
    if not np.isfinite(array).all():
        bad = array[~np.isfinite(array)][0]
        raise InputError(f"{name} must be finite numbers, got {bad} (NaN or inf)")


def validate_labels(point_labels, *, allow_pad: bool = False) -> np.ndarray:
    """Point labels as int32; each is 1, 0 or -1 (or PAD_LABEL with `allow_pad`)."""
    values = _numbers(point_labels, "point_labels")
    allowed = POINT_LABELS + ((PAD_LABEL,) if allow_pad else ())
    bad = ~np.isin(values, allowed)
    if bad.any():
        meaning = "1 (foreground), 0 (background) or -1 (not a point)"
        if allow_pad:
            meaning += f" or {PAD_LABEL} (an empty slot)"
        raise InputError(f"point labels must be {meaning}; got {values[bad][0]:g}")
    return values.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Checked prompts, batched: point_coords float64 [B, N, 2] with point_labels int32 [B, N],
    boxes float64 [B, 4], mask_input float32 [B, h, w] (each None when not given), B = count."""

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    boxes: np.ndarray | None
    mask_input: np.ndarray | None
    count: int


def validate_prompts(
    point_coords,
    point_labels,
    boxes,
    original_size,
    mask_input=None,
    *,
    mask_size: Sequence[int] | None = None,
    allow_pad: bool = False,
    box_valid=None,
) -> Prompts:
    """Checks a batch of B prompts in original-image pixels (see the module docstring) and
    returns it as arrays. `mask_size`: the decoder's low-res mask size; `box_valid` [B]: which
    rows hold a box (the others are padding and go unchecked)."""
    h, w = (int(v) for v in original_size)
    counts: dict[str, int] = {}
    coords = labels = None
    if point_coords is None and point_labels is not None:
        raise InputError("point_coords must be given with point_labels")
    if point_coords is not None:
        if point_labels is None:
            raise InputError("point_labels must be given with point_coords")
        coords = _numbers(point_coords, "point_coords")
        labels = validate_labels(point_labels, allow_pad=allow_pad)
        if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:-1]:
            raise InputError(
                "point_coords must be [B, N, 2] with point_labels [B, N] (B prompts of N "
                f"points); got point_coords {coords.shape} and point_labels {labels.shape}"
            )
        _check_finite(coords, "point_coords")
        _check_points_inside(coords, labels, w, h)
        counts["point sets"] = len(coords)
    box_array = None if boxes is None else _checked_boxes(boxes, box_valid, w, h)
    if box_array is not None:
        counts["boxes"] = len(box_array)
    masks = None if mask_input is None else _checked_masks(mask_input, mask_size)
    if masks is not None:
        counts["mask inputs"] = len(masks)
    if len(set(counts.values())) > 1:
        given = ", ".join(f"{n} {what}" for what, n in counts.items())
        raise InputError(f"prompt counts disagree: {given}; give one row per prompt in each")
    count = next(iter(counts.values()), 1)
    if count == 0:
        raise InputError("no prompts: the prompt arrays have 0 rows")
    return Prompts(coords, labels, box_array, masks, count)


def _check_points_inside(coords: np.ndarray, labels: np.ndarray, w: int, h: int) -> None:
    # Only clicks are placed on the image; -1 / PAD slots are ignored by the decoder wherever
    # they sit (padding puts them at the origin).
    x, y = coords[..., 0], coords[..., 1]
    outside = (labels >= 0) & ((x < 0) | (x > w) | (y < 0) | (y > h))
    if outside.any():
        raise InputError(
            f"point {coords[outside][0].tolist()} lies outside the {w}x{h} (WxH) image; points "
            "are (x, y) pixel coordinates in the original image"
        )


def _checked_boxes(boxes, box_valid, w: int, h: int) -> np.ndarray:
    array = _numbers(boxes, "boxes")
    if array.ndim != 2 or array.shape[1] != 4:
        raise InputError(
            f"boxes must be [B, 4] (one x0, y0, x1, y1 row per prompt), got shape {array.shape}"
        )
    rows = array if box_valid is None else array[np.asarray(box_valid, bool)]
    finite = np.isfinite(rows).all(axis=1)
    bad = ~finite | (rows[:, 0] > rows[:, 2]) | (rows[:, 1] > rows[:, 3])
    if bad.any():
        box = rows[bad][0]
        raise InputError(
            f"box {box.tolist()} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
            + ("" if np.isfinite(box).all() else " (it holds NaN or inf)")
        )
    outside = (rows[:, 0] < 0) | (rows[:, 1] < 0) | (rows[:, 2] > w) | (rows[:, 3] > h)
    if outside.any():
        box = rows[outside][0]
        raise InputError(
            f"box {box.tolist()} lies outside the {w}x{h} (WxH) image; clip it with "
            f"np.clip(box, 0, [{w}, {h}, {w}, {h}]) or fix its coordinates"
        )
    return array


def _checked_masks(mask_input, mask_size) -> np.ndarray:
    masks = _numbers(mask_input, "mask_input", np.float32)
    if masks.ndim == 4 and masks.shape[1] == 1:  # the official predict_torch layout [B, 1, h, w]
        masks = masks[:, 0]
    want = None if mask_size is None else tuple(int(v) for v in mask_size)
    if masks.ndim != 3 or (want is not None and masks.shape[-2:] != want):
        raise InputError(
            f"mask_input must be low-res logits of size {want or '(h, w)'}, one [B, h, w] row "
            "per prompt (e.g. the third output of a previous predict call), got shape "
            f"{masks.shape}"
        )
    _check_finite(masks, "mask_input")
    return masks


def single_prompt(
    point_coords, point_labels, box, mask_input, batch_method: str = "predict_batch"
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """`predict`'s one prompt (point_coords [N, 2], point_labels [N], box [4], mask_input
    [1, h, w] or [h, w]) with the batch axis added; a batch given here is refused, naming the
    method that takes one. Values are checked by `validate_prompts`."""
    several = f"; use {batch_method} for several prompts"
    if point_coords is not None:
        point_coords = _numbers(point_coords, "point_coords")
        if point_coords.ndim != 2 or point_coords.shape[-1] != 2:
            raise InputError(
                f"point_coords must be [N, 2] (x, y per point) for one prompt, got shape "
                f"{point_coords.shape}{several if point_coords.ndim == 3 else ''}"
            )
        point_coords = point_coords[None]
    if point_labels is not None:
        point_labels = _numbers(point_labels, "point_labels")
        if point_labels.ndim != 1:
            raise InputError(
                f"point_labels must be [N] for one prompt, got shape {point_labels.shape}"
                f"{several if point_labels.ndim == 2 else ''}"
            )
        point_labels = point_labels[None]
    if box is not None:
        box = _numbers(box, "box")
        if box.shape not in ((4,), (1, 4)):
            raise InputError(
                f"box must be 4 numbers (x0, y0, x1, y1) for one prompt, got shape {box.shape}"
                f"{several if box.ndim == 2 and box.shape[1] == 4 else ''}"
            )
        box = box.reshape(1, 4)
    if mask_input is not None:
        mask_input = _numbers(mask_input, "mask_input", np.float32)
        if mask_input.ndim not in (2, 3) or (mask_input.ndim == 3 and len(mask_input) != 1):
            raise InputError(
                "mask_input must be one low-res mask [1, h, w] for one prompt, got shape "
                f"{mask_input.shape}{several if mask_input.ndim >= 3 else ''}"
            )
        mask_input = mask_input.reshape(1, *mask_input.shape[-2:])
    return point_coords, point_labels, box, mask_input


def validate_embedding(
    embedding, *, model_type: str, feature_shape: tuple[int, ...], img_size: int
) -> None:
    """Refuses an embedding another model made: its recorded model type, its feature shape
    ([g, g, C] channels last; a batch [B, g, g, C] with `index`) and its sizes."""
    made_by = getattr(embedding, "model_type", None) or "unknown"
    named = made_by not in UNNAMED_MODELS and model_type not in UNNAMED_MODELS
    if named and made_by != model_type:
        raise InputError(
            f"the embedding was computed by a {made_by} model, this one is {model_type}: "
            "encode the image with this model (set_image) or load the matching model"
        )
    shape = tuple(np.shape(embedding.features))
    if getattr(embedding, "index", None) is not None or (len(shape) == 4 and shape[0] == 1):
        shape = shape[1:]
    if shape != tuple(feature_shape):
        raise InputError(
            f"embedding features {shape} do not fit this {model_type} model (expects "
            f"{tuple(feature_shape)}, channels last): the embedding comes from another model "
            "size; encode the image with this model"
        )
    original, given = _size_pair(embedding.original_size), _size_pair(embedding.input_size)
    if original is None or given is None or max(given) > img_size:
        raise InputError(
            f"embedding sizes original_size={embedding.original_size} and input_size="
            f"{embedding.input_size} do not fit this {model_type} model: expected two (H, W) "
            f"pairs of positive ints, input_size at most {img_size} px"
        )


def _size_pair(value) -> tuple[int, int] | None:
    try:
        h, w = (int(v) for v in np.asarray(value).reshape(-1))
    except (TypeError, ValueError):
        return None
    return (h, w) if h >= 1 and w >= 1 else None
