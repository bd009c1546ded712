"""Runs the artifacts written by `python -m stablesam_jax.commands.export` with only jax, numpy
and PIL.

This module imports no flax and none of the model code: a serving process needs jax, numpy, PIL,
the export directory and the package's numpy-only helpers (`constants`, `utils`).

    sam = ExportedSam("export_dir")
    embedding = sam.encode(image)                    # HxWx3 uint8, any size
    save_embedding("photo.npz", embedding)           # decode it again later, anywhere
    masks, iou, low_res = sam.decode(load_embedding("photo.npz"), point_coords=[[[x, y]]],
                                     point_labels=[[1]])

Prompts are in original-image pixels like `SamPredictor.predict_batch`: point_coords [n, p, 2],
point_labels [n, p] (1 foreground, 0 background, -2 an empty slot), boxes [n, 4] XYXY,
mask_input [n, 4g, 4g] low-res logits; the prompt count n and the points per prompt p are padded
to buckets so new counts rarely compile. A saved embedding also works with
`SamPredictor.set_embedding` (it has `features`, `original_size` and `input_size`).
"""

from __future__ import annotations

import collections
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ..constants import PAD_LABEL
from ..utils.batching import DEFAULT_PROMPT_BUCKETS, bucket, pad_rows, round_up
from ..utils.compilation_cache import enable_persistent_cache
from ..utils.transforms import ResizeLongestSide
from .embeddings import (
    EMBEDDING_FORMAT,
    EMBEDDING_FORMAT_VERSION,
    Embedding,
    ServingError,
    load_embedding,
    save_embedding,
    weights_digest,
)

__all__ = [
    "DECODER_FILE",
    "DECODER_WEIGHTS_FILE",
    "EMBEDDING_FORMAT",
    "EMBEDDING_FORMAT_VERSION",
    "ENCODER_FILE",
    "ENCODER_WEIGHTS_FILE",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "MANIFEST_FILE",
    "TRACE_COUNTS",
    "Embedding",
    "ExportedSam",
    "ServingError",
    "enable_persistent_cache",
    "load_embedding",
    "save_embedding",
    "weights_digest",
]

EXPORT_FORMAT = "stablesam-jax-export"
EXPORT_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.jaxexport"
DECODER_FILE = "decoder.jaxexport"
ENCODER_WEIGHTS_FILE = "encoder_weights.npz"
DECODER_WEIGHTS_FILE = "decoder_weights.npz"
DEFAULT_POINT_BUCKETS = (1, 2, 4, 8, 16, 32)
DEFAULT_IMAGE_BUCKETS = (1, 2, 4, 8)
SIZE_MULTIPLE = 64
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


def _postprocess_matrices(low_res: int, img_size: int, input_size, original_size):
    """Per-axis matrices for upscale-to-img_size, crop-to-input_size, resize-to-original."""
    out = []
    for axis in (0, 1):
        up = _linear_resize_matrix(low_res, img_size)[: input_size[axis]]
        down = _linear_resize_matrix(input_size[axis], original_size[axis])
        out.append((down @ up).astype(np.float32))
    return out


@jax.jit
def _postprocess(low_res, ry, rx):
    TRACE_COUNTS["postprocess"] += 1
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("nmlk,wk->nmlw", low_res, rx, precision=hi)
    return jnp.einsum("hl,nmlw->nmhw", ry, x, precision=hi)


# ----------------------------------------------------------------------------- the loader


class ExportedSam:
    """The exported encoder and decoder with their weights, ready to call.

    load_encoder=False skips the encoder (a client that decodes saved embeddings only);
    verify=False skips hashing the weight files (the manifest holds their sha256);
    compilation_cache_dir: a persistent XLA cache, so later processes start without compiling."""

    def __init__(
        self,
        directory,
        *,
        load_encoder: bool = True,
        verify: bool = True,
        prompt_buckets=DEFAULT_PROMPT_BUCKETS,
        point_buckets=DEFAULT_POINT_BUCKETS,
        image_buckets=DEFAULT_IMAGE_BUCKETS,
        compilation_cache_dir: str | None = None,
    ):
        if compilation_cache_dir is not None:
            enable_persistent_cache(compilation_cache_dir)
        self.directory = os.path.abspath(os.fspath(directory))
        manifest_path = os.path.join(self.directory, MANIFEST_FILE)
        if not os.path.isfile(manifest_path):
            raise ServingError(
                f"{self.directory} has no {MANIFEST_FILE}: export a model first with "
                "python -m stablesam_jax.commands.export --model-type ... --out DIR"
            )
        with open(manifest_path) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != EXPORT_FORMAT:
            raise ServingError(f"{manifest_path} is not a stablesam-jax export manifest")
        if int(self.manifest["format_version"]) > EXPORT_FORMAT_VERSION:
            raise ServingError(
                f"{self.directory} uses export format {self.manifest['format_version']}; this "
                f"loader knows up to {EXPORT_FORMAT_VERSION}"
            )
        m = self.manifest
        self.model_type = m["model_type"]
        self.img_size = int(m["img_size"])
        self.transform = ResizeLongestSide(self.img_size)
        self.low_res_size = int(m["low_res_size"])
        self.mask_threshold = float(m["mask_threshold"])
        self.encoder_id = m["encoder_id"]
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.point_buckets = tuple(sorted(point_buckets))
        self.image_buckets = tuple(sorted(image_buckets))
        self._decoder, self._decoder_weights = self._load("decoder", verify)
        self._encoder = self._encoder_weights = None
        if load_encoder:
            self._encoder, self._encoder_weights = self._load("encoder", verify)

    def _load(self, part: str, verify: bool):
        entry = self.manifest[part]
        artifact_path = os.path.join(self.directory, entry["artifact"])
        weights_path = os.path.join(self.directory, entry["weights"])
        for path in (artifact_path, weights_path):
            if not os.path.isfile(path):
                raise ServingError(f"{path} is missing from the export (re-export the model)")
        with open(artifact_path, "rb") as f:
            try:
                exported = jax.export.deserialize(bytearray(f.read()))
            except Exception as e:  # noqa: BLE001 - any failure means "unusable artifact"
                raise ServingError(f"{artifact_path} could not be deserialized ({e})") from e
        platform = jax.default_backend()
        # jax names a CUDA or ROCm backend "gpu"; artifacts name the exact platform.
        usable = {platform} | ({"cuda", "rocm"} if platform == "gpu" else set())
        if not usable & {p.lower() for p in exported.platforms}:
            raise ServingError(
                f"{artifact_path} was exported for {exported.platforms}, not {platform}; "
                f"re-export with --platforms {platform}"
            )
        with np.load(weights_path, allow_pickle=False) as data:
            weights = {k: data[k] for k in data.files}
        if verify and weights_digest(weights) != entry["weights_sha256"]:
            raise ServingError(f"{weights_path} does not match its checksum in the manifest")
        weights = jax.device_put(weights)

        def run(*args):
            TRACE_COUNTS[part] += 1
            return exported.call(*args)

        return jax.jit(run), weights

    # ----------------------------------------------------------------------------- encode

    def encode(self, images, image_format: str = "RGB"):
        """One HxWx3 uint8 image -> Embedding; a list of images -> list of Embeddings (one
        encoder call, batch padded to a bucket)."""
        if self._encoder is None:
            raise ServingError("this ExportedSam was opened with load_encoder=False")
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        if not batch:
            return []
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        s = self.img_size
        rows = bucket(len(batch), self.image_buckets)
        x = np.zeros((rows, s, s, 3), np.float32)
        mean = np.asarray(self.manifest["pixel_mean"], np.float32)
        std = np.asarray(self.manifest["pixel_std"], np.float32)
        sizes = []
        for i, image in enumerate(batch):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images must be HxWx3 uint8, got {image.shape} {image.dtype}")
            if image_format != self.manifest["image_format"]:
                image = image[..., ::-1]
            resized = self.transform.apply_image(np.ascontiguousarray(image))
            x[i, : resized.shape[0], : resized.shape[1]] = (resized.astype(np.float32) - mean) / std
            sizes.append((tuple(image.shape[:2]), tuple(resized.shape[:2])))
        features = np.asarray(self._encoder(self._encoder_weights, x))
        out = [
            Embedding(features[i], orig, inp, self.model_type, self.encoder_id)
            for i, (orig, inp) in enumerate(sizes)
        ]
        return out[0] if single else out

    # ----------------------------------------------------------------------------- decode

    def _check_embedding(self, embedding):
        features = np.asarray(embedding.features, np.float32)
        if features.ndim == 4:
            features = features[0]
        g = int(self.manifest["embedding_size"])
        expected = (g, g, int(self.manifest["embedding_dim"]))
        if features.shape != expected:
            raise ServingError(
                f"embedding features {features.shape} do not fit this {self.model_type} "
                f"decoder (expects {expected}, channels last)"
            )
        other = getattr(embedding, "encoder_id", "")
        if other and other != self.encoder_id:
            raise ServingError(
                f"the embedding was computed by encoder {other}, this export's encoder is "
                f"{self.encoder_id}; re-encode the image with this export"
            )
        return features

    def decode(
        self,
        embedding,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """Many prompts on one embedding. Returns (masks [n, M, H, W] bool (or logits),
        iou [n, M], low_res [n, M, 4g, 4g]) as numpy, M = 3 with multimask_output, else 1."""
        features = self._check_embedding(embedding)
        original_size = tuple(int(v) for v in embedding.original_size)
        input_size = tuple(int(v) for v in embedding.input_size)
        given = [x for x in (point_coords, boxes, mask_input) if x is not None]
        n = len(np.asarray(given[0])) if given else 1
        low = self.low_res_size
        coords = np.zeros((n, 1, 2), np.float64)
        labels = np.full((n, 1), PAD_LABEL, np.int32)
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            coords = np.asarray(point_coords, np.float64)
            labels = np.asarray(point_labels, np.int32)
            if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_coords must be [n, p, 2] with point_labels [n, p]; got "
                    f"{coords.shape} and {labels.shape}"
                )
            coords = self.transform.apply_coords(coords, original_size)
        box_in = np.zeros((n, 4), np.float64)
        box_valid = np.zeros((n,), bool)
        if boxes is not None:
            box_in = np.asarray(boxes, np.float64).reshape(-1, 4)
            box_in = self.transform.apply_boxes(box_in, original_size)
            box_valid = np.ones((len(box_in),), bool)
        masks_in = np.zeros((n, low, low), np.float32)
        mask_valid = np.zeros((n,), bool)
        if mask_input is not None:
            masks_in = np.asarray(mask_input, np.float32).reshape(-1, low, low)
            mask_valid = np.ones((len(masks_in),), bool)
        if not (len(coords) == len(box_in) == len(masks_in) == n):
            raise ValueError(
                f"prompt counts disagree: {len(coords)} point sets, {len(box_in)} boxes, "
                f"{len(masks_in)} masks"
            )
        rows = bucket(n, self.prompt_buckets)
        points = bucket(coords.shape[1], self.point_buckets)
        padded_coords = np.zeros((rows, points, 2), np.float32)
        padded_coords[:n, : coords.shape[1]] = coords
        padded_labels = np.full((rows, points), PAD_LABEL, np.int32)
        padded_labels[:n, : labels.shape[1]] = labels
        low_res, iou = self._decoder(
            self._decoder_weights,
            features[None],
            padded_coords,
            padded_labels,
            pad_rows(box_in.astype(np.float32), rows, fill=0),
            pad_rows(box_valid, rows, fill=0),
            pad_rows(masks_in, rows, fill=0),
            pad_rows(mask_valid, rows, fill=0),
        )
        sl = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = low_res[:, sl], iou[:, sl]
        ry, rx = _postprocess_matrices(low, self.img_size, input_size, original_size)
        h, w = original_size
        hb, wb = round_up(h, SIZE_MULTIPLE), round_up(w, SIZE_MULTIPLE)
        logits = _postprocess(low_res, pad_rows(ry, hb, fill=0), pad_rows(rx, wb, fill=0))
        logits = np.asarray(logits)[:n, :, :h, :w]
        masks = logits if return_logits else logits > self.mask_threshold
        return masks, np.asarray(iou)[:n], np.asarray(low_res)[:n]

    def predict(
        self,
        embedding,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ):
        """One prompt (like `SamPredictor.predict`): point_coords [p, 2], point_labels [p],
        box [4], mask_input [4g, 4g]. Returns (masks [M, H, W], iou [M], low_res [M, 4g, 4g])."""
        out = self.decode(
            embedding,
            None if point_coords is None else np.asarray(point_coords)[None],
            None if point_labels is None else np.asarray(point_labels)[None],
            None if box is None else np.asarray(box).reshape(1, 4),
            None if mask_input is None else np.asarray(mask_input)[None],
            multimask_output,
            return_logits,
        )
        return tuple(o[0] for o in out)
