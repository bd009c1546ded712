"""`SamPredictor`: the official predictor's API on a JAX model, plus batched calls.

Numbers in, numpy out, like the official class. The model's weights are captured when the
predictor is made (as a compiled model would be); call `update_weights()` after changing them.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .constants import PIXEL_MEAN, PIXEL_STD
from .modeling import ops
from .modeling.sam import Sam
from .utils.batching import DEFAULT_PROMPT_BUCKETS, bucket, pad_rows
from .utils.embedding import ImageEmbedding
from .utils.transforms import ResizeLongestSide


def validate_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be an HxWx3 array, got shape {image.shape}"
            + (" (convert grayscale/RGBA to RGB first)" if image.ndim in (2, 3) else "")
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (0-255) like the official predictor, got {image.dtype}; "
            "use (image * 255).round().astype(np.uint8) for images in [0, 1]"
        )
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image has an empty side: shape {image.shape}")
    return image


def validate_prompts(point_coords, point_labels, boxes, original_size) -> None:
    """Clear errors for prompts that cannot mean what the caller wants."""
    h, w = original_size
    if point_coords is not None:
        if point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        coords = np.asarray(point_coords, dtype=np.float64)
        if coords.shape[-1] != 2 or coords.shape[:-1] != np.shape(point_labels):
            raise ValueError(
                f"point_coords {coords.shape} must be [..., N, 2] with point_labels [..., N], "
                f"got point_labels {np.shape(point_labels)}"
            )
        bad = (
            ~np.isfinite(coords).all(-1)
            | (coords[..., 0] < 0)
            | (coords[..., 0] > w)
            | (coords[..., 1] < 0)
            | (coords[..., 1] > h)
        )
        if bad.any():
            raise ValueError(
                f"point {coords[bad][0].tolist()} lies outside the {w}x{h} (WxH) image; points "
                "are (x, y) pixel coordinates in the original image"
            )
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for box in b:
            x0, y0, x1, y1 = box
            if not np.isfinite(box).all() or x0 > x1 or y0 > y1:
                raise ValueError(
                    f"box {box.tolist()} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
                )
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise ValueError(
                    f"box {box.tolist()} lies outside the {w}x{h} (WxH) image; clip it with "
                    f"np.clip(box, 0, [{w}, {h}, {w}, {h}]) or fix its coordinates"
                )


@functools.partial(
    jax.jit, static_argnums=(0,), static_argnames=("multimask_output", "return_intermediates")
)
def _decode(
    graphdef,
    state,
    features,
    point_coords,
    point_labels,
    boxes,
    mask_input,
    *,
    multimask_output,
    return_intermediates,
):
    model = nnx.merge(graphdef, state)
    return model.decode(
        features[None],
        point_coords,
        point_labels,
        boxes,
        mask_input,
        multimask_output=multimask_output,
        return_intermediates=return_intermediates,
    )


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _postprocess(img_size, masks, input_size, original_size):
    s = img_size
    masks = ops.resize_bilinear(masks, (s, s))[..., : input_size[0], : input_size[1]]
    return ops.resize_bilinear(masks, original_size)


class SamPredictor:
    # The current image: set by set_image / set_embedding, None after reset_image (every use
    # checks is_image_set first).
    features: jax.Array | None
    original_size: Any  # tuple[int, int] while an image is set
    input_size: Any

    def __init__(self, sam_model: Sam, prompt_buckets: tuple[int, ...] = DEFAULT_PROMPT_BUCKETS):
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.img_size)
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.update_weights()
        self.reset_image()

    def update_weights(self) -> None:
        self._graphdef, self._state = nnx.split(self.model)

    # ----------------------------------------------------------------------------- images

    def _prepare(self, image: np.ndarray, image_format: str) -> np.ndarray:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = validate_image(image)
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        return self.transform.apply_image(np.ascontiguousarray(image))

    def encode_images(self, images, image_format: str = "RGB") -> list[ImageEmbedding]:
        """Runs a batch of HxWx3 uint8 images (any sizes) through the encoder in one call."""
        resized = [self._prepare(im, image_format) for im in images]
        feats = self._encode_resized(resized)
        return [
            ImageEmbedding(f, tuple(np.shape(im)[:2]), tuple(r.shape[:2]), self.model.model_type)
            for r, im, f in zip(resized, images, feats)
        ]

    def _encode_resized(self, resized: list[np.ndarray]) -> jax.Array:
        """Normalizes and zero-pads on the host (what Sam.preprocess does), so every image size
        shares one compiled encoder."""
        s = self.model.img_size
        x = np.zeros((len(resized), s, s, 3), np.float32)
        mean, std = np.asarray(PIXEL_MEAN, np.float32), np.asarray(PIXEL_STD, np.float32)
        for i, r in enumerate(resized):
            x[i, : r.shape[0], : r.shape[1]] = (r.astype(np.float32) - mean) / std
        return _encode_normalized(self._graphdef, self._state, jnp.asarray(x))

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Computes and stores the embedding of one HxWx3 uint8 image."""
        resized = self._prepare(image, image_format)
        feats = self._encode_resized([resized])
        self.set_embedding(
            ImageEmbedding(
                feats[0], tuple(image.shape[:2]), resized.shape[:2], self.model.model_type
            )
        )

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Uses a precomputed (or saved and reloaded) embedding instead of running the encoder."""
        self.reset_image()
        self.features = jnp.asarray(embedding.features)
        self.original_size = tuple(int(v) for v in embedding.original_size)
        self.input_size = tuple(int(v) for v in embedding.input_size)
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """[1, C, H', W'] like the official predictor (channels first)."""
        self._require_image()
        return np.asarray(self.features).transpose(2, 0, 1)[None]

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None

    def _require_image(self):
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    # ----------------------------------------------------------------------------- prompts

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        return_intermediates: bool = False,
    ):
        """One prompt, original-image coordinates. Returns (masks [C, H, W], iou_predictions
        [C], low_res_masks [C, 256, 256]) as numpy, plus a dict of named intermediates (DRP
        weights, DSP sampling positions, token-to-image attention) when asked."""
        self._require_image()
        out = self.predict_batch(
            None if point_coords is None else np.asarray(point_coords)[None],
            None if point_labels is None else np.asarray(point_labels)[None],
            None if box is None else np.asarray(box).reshape(1, 4),
            None
            if mask_input is None
            else np.asarray(mask_input).reshape(1, *np.shape(mask_input)[-2:]),
            multimask_output=multimask_output,
            return_logits=return_logits,
            return_intermediates=return_intermediates,
        )
        first = tuple(o[0] for o in out[:3])
        if return_intermediates:
            return (*first, {k: v[0] for k, v in out[3].items()})
        return first

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        return_intermediates: bool = False,
    ):
        """Many prompts on the current image in one call (the official `predict_torch` role):
        point_coords [B, N, 2], point_labels [B, N], boxes [B, 4], mask_input [B, 256, 256], in
        original-image coordinates. Returns masks [B, C, H, W], iou [B, C], low-res [B, C, 256,
        256]. B is padded to a bucket size so new prompt counts rarely recompile."""
        self._require_image()
        validate_prompts(point_coords, point_labels, boxes, self.original_size)
        coords = labels = box_in = masks_in = None
        if point_coords is not None:
            coords = self.transform.apply_coords(np.asarray(point_coords), self.original_size)
            coords = coords.astype(np.float32)
            labels = np.asarray(point_labels, np.int32)
        if boxes is not None:
            box_in = self.transform.apply_boxes(np.asarray(boxes), self.original_size)
            box_in = box_in.astype(np.float32)
        if mask_input is not None:
            masks_in = np.asarray(mask_input, np.float32)
            want = tuple(self.model.prompt_encoder.mask_input_size)
            if masks_in.shape[-2:] != want:
                raise ValueError(
                    f"mask_input must be low-res logits of size {want} (e.g. the third output "
                    f"of a previous predict call), got shape {masks_in.shape}"
                )
            masks_in = masks_in.reshape(-1, *masks_in.shape[-2:])
        n = next(x.shape[0] for x in (coords, box_in, masks_in, np.zeros((1,))) if x is not None)
        rows = bucket(n, self.prompt_buckets)
        coords, labels, box_in, masks_in = (
            pad_rows(x, rows) for x in (coords, labels, box_in, masks_in)
        )
        low_res, iou, inter = _decode(
            self._graphdef,
            self._state,
            self.features,
            coords,
            labels,
            box_in,
            masks_in,
            multimask_output=multimask_output,
            return_intermediates=return_intermediates,
        )
        masks = _postprocess(self.model.img_size, low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        result = (np.asarray(masks)[:n], np.asarray(iou)[:n], np.asarray(low_res)[:n])
        if return_intermediates:
            return (*result, {k: np.asarray(v)[:n] for k, v in inter.items()})
        return result


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_normalized(graphdef, state, x):
    return nnx.merge(graphdef, state).image_encoder(x)
