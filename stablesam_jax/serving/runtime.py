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
to buckets so new counts rarely compile. An HQ-SAM export (manifest `hq`) returns one mask per
prompt, as `SamPredictor`, and takes `hq_token_only`. A saved embedding also works with
`SamPredictor.set_embedding` (it has `features`, `original_size` and `input_size`).
"""

from __future__ import annotations

import functools
import os
import zipfile

import jax
import numpy as np

from ..constants import PAD_LABEL
from ..utils.batching import DEFAULT_PROMPT_BUCKETS, bucket, pad_rows, round_up
from ..utils.chunking import plan_exported_decode, run_in_chunks
from ..utils.compilation_cache import enable_persistent_cache
from ..utils.transforms import ResizeLongestSide
from ..utils.validation import single_prompt, validate_prompts
from .embeddings import (
    EMBEDDING_FORMAT,
    EMBEDDING_FORMAT_VERSION,
    Embedding,
    ServingError,
    load_embedding,
    save_embedding,
    weights_digest,
)
from .manifest import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, MANIFEST_FILE, read_manifest
from .outputs import TRACE_COUNTS, postprocess, postprocess_matrices, select_hq

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

ENCODER_FILE = "encoder.jaxexport"
DECODER_FILE = "decoder.jaxexport"
ENCODER_WEIGHTS_FILE = "encoder_weights.npz"
DECODER_WEIGHTS_FILE = "decoder_weights.npz"
DEFAULT_POINT_BUCKETS = (1, 2, 4, 8, 16, 32)
DEFAULT_IMAGE_BUCKETS = (1, 2, 4, 8)
SIZE_MULTIPLE = 64


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
        self.manifest = m = read_manifest(manifest_path)
        self.model_type = m["model_type"]
        self.img_size = int(m["img_size"])
        self.transform = ResizeLongestSide(self.img_size)
        self.low_res_size = int(m["low_res_size"])
        self.mask_threshold = float(m["mask_threshold"])
        self.encoder_id = m["encoder_id"]
        # Exports older than HQ-SAM support have no "hq": they are SAM or Stable-SAM.
        self.hq = bool(m.get("hq", False))
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
                # Deserializing is lazy: reading the module now makes a damaged artifact fail
                # here, naming its file, instead of at the first call.
                exported.mlir_module()
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
        try:
            with np.load(weights_path, allow_pickle=False) as data:
                weights = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ServingError(
                f"{weights_path} cannot be read ({e}): it is truncated or damaged; re-export "
                "the model"
            ) from e
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
            hq = " (SAM's 256, then the early encoder features)" if self.hq else ""
            raise ServingError(
                f"embedding features {features.shape} do not fit this {self.model_type} "
                f"decoder (expects {expected}, channels last{hq}); encode the image with this "
                "export's encoder"
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
        hq_token_only: bool = False,
    ):
        """Many prompts on one embedding. Returns (masks [n, M, H, W] bool (or logits),
        iou [n, M], low_res [n, M, 4g, 4g]) as numpy, M = 3 with multimask_output, else 1;
        an HQ-SAM export always M = 1 (as `SamPredictor`), the HQ mask alone with
        hq_token_only (refused by other exports)."""
        if hq_token_only and not self.hq:
            raise ValueError(
                f"hq_token_only=True needs an HQ-SAM export (hq_vit_*); this {self.model_type} "
                "export is SAM: drop hq_token_only, or export an HQ-SAM model"
            )
        features = self._check_embedding(embedding)
        original_size = tuple(int(v) for v in embedding.original_size)
        input_size = tuple(int(v) for v in embedding.input_size)
        low = self.low_res_size
        prompts = validate_prompts(
            point_coords,
            point_labels,
            boxes,
            original_size,
            mask_input,
            mask_size=(low, low),
            allow_pad=True,
        )
        n = prompts.count
        several = multimask_output and not self.hq  # HQ-SAM returns one mask either way
        sizes = (self.manifest, n, original_size, SIZE_MULTIPLE, several, return_logits)
        chunk = plan_exported_decode(*sizes, self.prompt_buckets)
        if chunk < n:  # too big for the device: bucket-sized calls, one compile
            options = dict(
                multimask_output=multimask_output,
                return_logits=return_logits,
                hq_token_only=hq_token_only,
            )
            decode = functools.partial(self.decode, embedding, **options)
            inputs = [prompts.point_coords, prompts.point_labels, prompts.boxes, prompts.mask_input]
            return run_in_chunks(decode, n, chunk, inputs)
        coords = np.zeros((n, 1, 2), np.float64)
        labels = np.full((n, 1), PAD_LABEL, np.int32)
        if prompts.point_coords is not None:
            coords = self.transform.apply_coords(prompts.point_coords, original_size)
            labels = prompts.point_labels
        box_in = np.zeros((n, 4), np.float64)
        box_valid = np.full((n,), prompts.boxes is not None)
        if prompts.boxes is not None:
            box_in = self.transform.apply_boxes(prompts.boxes, original_size)
        masks_in = prompts.mask_input
        mask_valid = np.full((n,), masks_in is not None)
        if masks_in is None:
            masks_in = np.zeros((n, low, low), np.float32)
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
        if self.hq:
            low_res, iou = select_hq(low_res, iou, bool(multimask_output), bool(hq_token_only))
        else:
            sl = slice(1, None) if multimask_output else slice(0, 1)
            low_res, iou = low_res[:, sl], iou[:, sl]
        ry, rx = postprocess_matrices(low, self.img_size, input_size, original_size)
        h, w = original_size
        hb, wb = round_up(h, SIZE_MULTIPLE), round_up(w, SIZE_MULTIPLE)
        logits = postprocess(low_res, pad_rows(ry, hb, fill=0), pad_rows(rx, wb, fill=0))
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
        hq_token_only: bool = False,
    ):
        """One prompt (like `SamPredictor.predict`): point_coords [p, 2], point_labels [p],
        box [4], mask_input [4g, 4g]. Returns (masks [M, H, W], iou [M], low_res [M, 4g, 4g])."""
        out = self.decode(
            embedding,
            *single_prompt(point_coords, point_labels, box, mask_input, batch_method="decode"),
            multimask_output,
            return_logits,
            hq_token_only,
        )
        return tuple(o[0] for o in out)
