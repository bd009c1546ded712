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
from .utils import torch_compat
from .utils.batching import DEFAULT_PROMPT_BUCKETS, bucket, pad_rows
from .utils.chunking import plan_decode, run_in_chunks
from .utils.embedding import ImageEmbedding
from .utils.transforms import ResizeLongestSide
from .utils.validation import (
    single_prompt,
    validate_embedding,
    validate_image,
    validate_prompts,
)


@functools.partial(
    jax.jit,
    static_argnums=(0,),
    static_argnames=("multimask_output", "return_intermediates", "hq_token_only"),
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
    hq_token_only=False,
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
        hq_token_only=hq_token_only,
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
        image = validate_image(image, self.model.img_size)
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
        """Uses a precomputed (or saved and reloaded) embedding instead of running the encoder.
        One made by another model (type or size) is refused with a message."""
        config = self.model.config
        grid = config.image_embedding_size
        validate_embedding(
            embedding,
            model_type=self.model.model_type,
            feature_shape=(grid, grid, config.embedding_channels),
            img_size=self.model.img_size,
        )
        features = embedding.features
        if getattr(embedding, "index", None) is not None:
            features = features[embedding.index]
        self.reset_image()
        self.features = jnp.asarray(features).reshape(grid, grid, config.embedding_channels)
        self.original_size = tuple(int(v) for v in embedding.original_size)
        self.input_size = tuple(int(v) for v in embedding.input_size)
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """[1, C, H', W'] like the official predictor (channels first). HQ-SAM's early encoder
        features (the official predictor's `interm_features`) are left out."""
        self._require_image()
        c = self.model.config.prompt_embed_dim
        return np.asarray(self.features)[..., :c].transpose(2, 0, 1)[None]

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
        hq_token_only: bool = False,
    ):
        """One prompt, original-image coordinates. Returns (masks [C, H, W], iou_predictions
        [C], low_res_masks [C, 256, 256]) as numpy, plus a dict of named intermediates (DRP
        weights, DSP sampling positions, token-to-image attention) when asked.

        HQ-SAM models return one mask (C = 1) either way, as the official HQ predictor;
        `hq_token_only=True` returns the HQ token's mask alone (SAM models refuse it)."""
        self._require_image()
        out = self.predict_batch(
            *single_prompt(point_coords, point_labels, box, mask_input),
            multimask_output=multimask_output,
            return_logits=return_logits,
            return_intermediates=return_intermediates,
            hq_token_only=hq_token_only,
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
        hq_token_only: bool = False,
    ):
        """Many prompts on the current image in one call (the official `predict_torch` role):
        point_coords [B, N, 2], point_labels [B, N], boxes [B, 4], mask_input [B, 256, 256], in
        original-image coordinates. Returns masks [B, C, H, W], iou [B, C], low-res [B, C, 256,
        256]. B is padded to a bucket size so new prompt counts rarely recompile."""
        self._require_image()
        prompts = validate_prompts(
            point_coords,
            point_labels,
            boxes,
            self.original_size,
            mask_input,
            mask_size=tuple(self.model.prompt_encoder.mask_input_size),
        )
        coords = labels = box_in = None
        if prompts.point_coords is not None:
            coords = self.transform.apply_coords(prompts.point_coords, self.original_size)
            coords = coords.astype(np.float32)
            labels = prompts.point_labels
        if prompts.boxes is not None:
            box_in = self.transform.apply_boxes(prompts.boxes, self.original_size)
            box_in = box_in.astype(np.float32)
        masks_in, n = prompts.mask_input, prompts.count
        chunk = self._chunk_rows(n, multimask_output, return_logits, return_intermediates)
        if chunk < n:  # too big for the device: bucket-sized calls, one compile
            options = dict(
                multimask_output=multimask_output,
                return_logits=return_logits,
                return_intermediates=return_intermediates,
                hq_token_only=hq_token_only,
            )
            inputs = [prompts.point_coords, prompts.point_labels, prompts.boxes, masks_in]
            return run_in_chunks(self.predict_batch, n, chunk, inputs, **options)
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
            hq_token_only=hq_token_only,
        )
        masks = _postprocess(self.model.img_size, low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        result = (np.asarray(masks)[:n], np.asarray(iou)[:n], np.asarray(low_res)[:n])
        if return_intermediates:
            return (*result, {k: np.asarray(v)[:n] for k, v in inter.items()})
        return result

    def _chunk_rows(self, n: int, multimask: bool, logits: bool, intermediates: bool) -> int:
        """Prompts per decode call (`utils.chunking.plan_decode`): all n unless they would not
        fit the device; MemoryError, before anything runs, when their outputs do not fit the host.
        `_postprocess` holds (m + 2) s^2 floats (measured) and the masks per prompt."""
        cfg, (h, w), features = self.model.config, self.original_size, self.features
        g, c, s = cfg.image_embedding_size, cfg.prompt_embed_dim, cfg.img_size
        m = self.model.mask_decoder.num_multimask_outputs if multimask else 1
        return plan_decode(
            n,
            grid=g,
            channels=c,
            plugins=self.model.plugin_config is not None,
            masks=m,
            original_size=(h, w),
            upsample_bytes=4 * (m + 2) * s * s + 5 * m * h * w,
            logits=logits,
            buckets=self.prompt_buckets,
            device=None if features is None else next(iter(features.devices())),
            # Token-to-image attention, the plugins' sampling maps and the image tokens.
            extra_bytes=8 * g * g * c if intermediates else 0,
        )

    # ------------------------------------------------------------ the official torch surface

    @property
    def device(self) -> Any:
        """The model's device (`Sam.device`): a `torch.device` once the program imported torch,
        else the `jax.Device`."""
        return self.model.device

    def predict_torch(
        self,
        point_coords: Any,
        point_labels: Any,
        boxes: Any = None,
        mask_input: Any = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
    ):
        """The official `predict_torch`: prompts already in the model's input frame (from
        `transform.apply_coords_torch` / `apply_boxes_torch`), point_coords [B, N, 2],
        point_labels [B, N], boxes [B, 4], mask_input [B, 1, 256, 256], as torch tensors or
        arrays. Returns torch tensors on `self.device`: masks [B, C, H, W], iou_predictions [B,
        C], low-res logits [B, C, 256, 256].

        Runs through `predict_batch`, with the prompts mapped back to original-image pixels
        (exactly: the decoder sees the same float32 coordinates), so it shares its checks,
        bucketing and chunking; a refused prompt is named in original-image pixels."""
        self._require_image()
        size, to_numpy = self.original_size, torch_compat.to_numpy
        coords = None if point_coords is None else to_numpy(point_coords)
        box = None if boxes is None else to_numpy(boxes)
        masks, iou, low_res = self.predict_batch(
            None if coords is None else self.transform.restore_coords(coords, size),
            None if point_labels is None else to_numpy(point_labels),
            None if box is None else self.transform.restore_boxes(box, size),
            None if mask_input is None else to_numpy(mask_input),
            multimask_output=multimask_output,
            return_logits=return_logits,
            hq_token_only=hq_token_only,
        )
        device = torch_compat.torch_device(torch_compat.device_of(self._state))
        return tuple(torch_compat.to_torch(x, device) for x in (masks, iou, low_res))


@functools.partial(jax.jit, static_argnums=(0,))
def _encode_normalized(graphdef, state, x):
    return nnx.merge(graphdef, state).image_encoder(x)
