"""The evaluation job (issue 5): SAM variants under prompts of varying quality (paper Tables 2-3).

Protocol (design doc section 5). For every image, every prompt type and every model:
`num_prompts` prompts are drawn with `prompts.eval_prompts(mask, type, num, image_seed(name, seed))`
(so each model sees exactly the same prompts), decoded in one batched call on the image's
embedding with the single-mask output (`multimask_output=False`), and the low-res (256x256)
logits are upsampled to the original image size (`Sam.postprocess_masks`) and thresholded at 0. Per image:
mIoU and mBIoU are the means over the prompts of `metrics.mask_iou` / `metrics.boundary_iou`, mSF
is `metrics.stability_score` of the prompts' masks. Per dataset: the mean over its images; pooled:
the mean over all images of all datasets. All reported values are 0-100. Models with the dynamic
routing plugin also report the mean routing weight a1 (`layer1/drp_alpha[:, 0]`) per prompt type.

In-process use (the demo): `evaluate(models, datasets, prompt_types)` returns the pooled
`{model: {prompt_type: {"miou", "mbiou", "msf", "num_images"[, "drp_a1"]}}}`;
`evaluate_report` returns the full report that `run` writes to results.json; `format_table`
renders either as Markdown shaped like the paper's Table 2.

Devices. Weights are replicated over a 1-D `data` mesh of all local devices; the images of an
encoder batch and the prompts of a decode call are sharded over it (batches are padded to a
multiple of the device count and the padding is sliced off), so one device or eight run the same
code. Models whose image encoders are identical (SAM, Stable-SAM, DT-SAM and PT-SAM all keep SAM's
frozen encoder) share one image embedding per image. For JAX models the upsampling, thresholding
and the metrics' pixel counts run on the device and only counts come back (`metrics_from_counts`
turns them into exactly `metrics`' values; tests pin the equality): the HQ sets' multi-megapixel
masks would otherwise cost ~0.1 s of host CPU per mask for the boundary IoU alone. Masks come back
to the host only for COCO, injected predictors, or `metrics_on_device=False`.

Compilation: one encoder (per encoder and batch size), one decoder per model (prompt batches are
padded to `num_prompts` rows and max-points slots, whatever the type), and one upsampling/metrics
program per distinct original image size, shared by all models.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..constants import PAD_LABEL, PIXEL_MEAN, PIXEL_STD
from ..data import folders
from ..data.pipeline import EvalSource, PairSource
from ..data.prompts import NUM_POINTS, PROMPT_TYPES, eval_prompts, image_seed
from ..data.scenes import SceneDataset
from ..modeling import ops
from ..modeling.sam import SAM_VARIANTS, Sam
from ..utils.transforms import ResizeLongestSide
from . import coco as coco_lib
from . import metrics

RESULTS_SCHEMA_VERSION = 1
DATA_AXIS = "data"

# The demo's four types; the paper's Table 2 shows noisy_box, one_point and three_points.
DEFAULT_PROMPT_TYPES = ("gt_box", "noisy_box", "one_point", "three_points")
PAPER_TABLE2_PROMPT_TYPES = ("noisy_box", "one_point", "three_points")
COCO_IOU_BINS = ((0.5, 0.6), (0.6, 0.7))
METRIC_KEYS = ("miou", "mbiou", "msf")
POOLED = "pooled"

PROMPT_TYPE_TITLES = {
    "gt_box": "GT Box",
    "noisy_box": "Noisy Box",
    "noisy_box_50_60": "N-Box 0.5-0.6",
    "noisy_box_60_70": "N-Box 0.6-0.7",
    "one_point": "1 Point",
    "three_points": "3 Points",
    "five_points": "5 Points",
    "ten_points": "10 Points",
}
# The one routing weight a1 of the first plugin layer (the paper's Stable-SAM has one, layer 1).
DRP_ALPHA_SUFFIX = "/drp_alpha"


# --------------------------------------------------------------------------------------------------
# Specs: what the config names


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build one model of the comparison.

    kind "sam": SAM weights from `checkpoint` (a converted or `save_sam` directory) or `merged`
    (a full export, e.g. a DT-SAM / PT-SAM run that retrained decoder weights). kind "stable_sam":
    SAM weights from `checkpoint` plus `plugins` (a plugin checkpoint), or one `merged`
    "stable_sam" export. `random_init=True` allows missing weights to be random (SAM weights from
    `seed`, fresh plugins, which reproduce SAM exactly): for tests and smoke runs only.
    `plugin_options` are `PluginConfig` overrides for kind "stable_sam".
    """

    name: str
    model_type: str = "vit_l"
    kind: str = "sam"
    checkpoint: str | None = None
    plugins: str | None = None
    merged: str | None = None
    random_init: bool = False
    seed: int = 0
    dtype: str | None = None
    attention_impl: str = "reference"
    plugin_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        where = f"model {self.name!r}"
        if self.kind not in ("sam", "stable_sam"):
            raise ValueError(f"{where}: kind must be 'sam' or 'stable_sam', got {self.kind!r}")
        if self.model_type not in SAM_VARIANTS:
            raise ValueError(
                f"{where}: unknown model_type {self.model_type!r}; choose from {sorted(SAM_VARIANTS)}"
            )
        if self.dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"{where}: dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.merged and (self.checkpoint or self.plugins):
            raise ValueError(
                f"{where}: give either `merged` or `checkpoint` (+ `plugins`), not both"
            )
        if self.kind == "sam" and self.plugins:
            raise ValueError(f"{where}: `plugins` needs kind='stable_sam'")
        if self.random_init or self.merged:
            return
        missing = []
        if not self.checkpoint:
            missing.append("checkpoint (SAM weights)")
        if self.kind == "stable_sam" and not self.plugins:
            missing.append("plugins (a Stable-SAM plugin checkpoint)")
        if missing:
            raise ValueError(
                f"{where} needs {' and '.join(missing)}: set the path (e.g. "
                f"--config.models.{self.name}.checkpoint=DIR), or `merged` for a full export, "
                f"or random_init=True for a smoke run with random weights, or disable it with "
                f"--config.models.{self.name}.enabled=False"
            )

    def build(self) -> Sam:
        from .. import builder
        from .. import checkpoint as ckpt

        self.validate()
        dtype = jnp.bfloat16 if self.dtype == "bfloat16" else None
        common = dict(dtype=dtype, attention_impl=self.attention_impl, seed=self.seed)
        if self.merged:
            stored = ckpt.read_meta(self.merged).get("kind")
            if self.kind == "sam" and stored == "stable_sam":
                raise ValueError(
                    f"model {self.name!r}: {self.merged} is a Stable-SAM export; set kind='stable_sam'"
                )
            if self.kind == "stable_sam":
                return builder.build_stable_sam(
                    self.model_type, self.merged, **common, **dict(self.plugin_options)
                )
            return builder.build_sam(self.model_type, self.merged, **common)
        if self.kind == "stable_sam":
            return builder.build_stable_sam(
                self.model_type,
                self.checkpoint or None,
                self.plugins or None,
                **common,
                **dict(self.plugin_options),
            )
        return builder.build_sam(self.model_type, self.checkpoint or None, **common)

    def describe(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {}, "")}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One evaluation set of single-object image/mask pairs.

    kind "layout": a registered set of `data.folders.DATASETS` (DIS5K-VD, ThinObject5K-TE, COIFT,
    HR-SOD, ...) under `root`; `layout` defaults to `name`. kind "folder": any `image_dir` +
    `mask_dir` pair matched by file stem. kind "scenes": `num` generated scenes (`data.scenes`,
    largest instance). kind "tfds": split `split` (default `name`, e.g. "DIS5K-VD") of a dataset
    prepared by `data.tfds_builder.build_tfds` in `tfds_dir` (needs tensorflow-datasets).
    `max_images` keeps the first images in sorted order.
    """

    name: str
    kind: str = "layout"
    root: str | None = None
    layout: str | None = None
    image_dir: str | None = None
    mask_dir: str | None = None
    image_exts: tuple[str, ...] = (".jpg", ".jpeg", ".png")
    mask_exts: tuple[str, ...] = (".png",)
    num: int = 8
    seed: int = 0
    size: int = 256
    max_objects: int = 4
    tfds_dir: str | None = None
    split: str | None = None
    max_images: int | None = None
    allow_unmatched: bool = False

    def open(self) -> EvalSource:
        where = f"dataset {self.name!r}"
        if self.kind == "layout":
            layout = self.layout or self.name
            if layout not in folders.DATASETS:
                raise ValueError(
                    f"{where}: unknown layout {layout!r}; known: {', '.join(folders.DATASETS)}"
                )
            if not self.root:
                raise ValueError(
                    f"{where}: set the data root (--config.data_root=DIR, the folder holding "
                    "HQ-SAM's release: DIS5K/, thin_object_detection/, ...)"
                )
            pairs = folders.find_pairs(self.root, layout, allow_unmatched=self.allow_unmatched)
            return EvalSource(PairSource(pairs, [f"{layout}/{Path(p[0]).stem}" for p in pairs]))
        if self.kind == "folder":
            if not self.image_dir or not self.mask_dir:
                raise ValueError(f"{where}: kind 'folder' needs image_dir and mask_dir")
            image_exts = tuple(e.lower() for e in self.image_exts)
            mask_exts = tuple(e.lower() for e in self.mask_exts)
            if os.path.abspath(self.image_dir) == os.path.abspath(self.mask_dir):
                # Side by side (cascade_psp style): extensions tell images from masks.
                image_exts = tuple(e for e in image_exts if e not in mask_exts)
                pairs = folders.folder_pairs(
                    self.image_dir,
                    self.mask_dir,
                    image_exts=image_exts,
                    mask_exts=mask_exts,
                    allow_unmatched=self.allow_unmatched,
                )
            else:
                pairs = _separate_folder_pairs(
                    self.image_dir, self.mask_dir, image_exts, mask_exts, self.allow_unmatched
                )
            names = [f"{self.name}/{Path(p[0]).stem}" for p in pairs]
            return EvalSource(PairSource(pairs, names))
        if self.kind == "scenes":
            return EvalSource(
                SceneDataset(self.num, seed=self.seed, size=self.size, max_objects=self.max_objects)
            )
        if self.kind == "tfds":
            if not self.tfds_dir:
                raise ValueError(
                    f"{where}: kind 'tfds' needs tfds_dir, the prepared dataset's version folder "
                    "(e.g. <data_dir>/hq_seg/1.0.0, written by data.tfds_builder.build_tfds)"
                )
            from ..data.tfds_builder import TfdsRecordSource

            return EvalSource(TfdsRecordSource(self.tfds_dir, self.split or self.name))
        raise ValueError(
            f"{where}: kind must be 'layout', 'folder', 'scenes' or 'tfds', got {self.kind!r}"
        )


def _separate_folder_pairs(image_dir, mask_dir, image_exts, mask_exts, allow_unmatched):
    """`folders.folder_pairs` for two separate folders whose extensions may overlap (PNG images
    with PNG masks is common); `folder_pairs` forbids overlap since it also serves shared folders.
    """
    if not set(image_exts) & set(mask_exts):
        return folders.folder_pairs(
            image_dir,
            mask_dir,
            image_exts=image_exts,
            mask_exts=mask_exts,
            allow_unmatched=allow_unmatched,
        )

    def by_stem(directory, exts, what):
        if not os.path.isdir(directory):
            raise folders.DataError(f"{what} directory {directory} does not exist")
        found = {}
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if entry.is_file() and ext.lower() in exts:
                if stem in found:
                    raise folders.DataError(
                        f"{directory}: two files share the stem {stem!r}; keep one of them"
                    )
                found[stem] = Path(entry.path)
        return found

    images = by_stem(image_dir, image_exts, "image")
    masks = by_stem(mask_dir, mask_exts, "mask")
    unmatched = sorted(images.keys() ^ masks.keys())
    if unmatched and not allow_unmatched:
        raise folders.DataError(
            f"{len(unmatched)} file(s) in {image_dir} / {mask_dir} have no partner (stems: "
            f"{', '.join(unmatched[:5])}); restore them or set allow_unmatched=True"
        )
    if not images.keys() & masks.keys():
        raise folders.DataError(f"no image/mask pairs in {image_dir} and {mask_dir}")
    return [(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]


@dataclasses.dataclass(frozen=True)
class CocoSpec:
    """A COCO-format instance set: `annotation_file` (json) and `image_dir`."""

    name: str
    annotation_file: str
    image_dir: str
    iou_bins: tuple[tuple[float, float], ...] = COCO_IOU_BINS
    max_images: int | None = None


# --------------------------------------------------------------------------------------------------
# Predictors


@dataclasses.dataclass
class Sample:
    """One evaluation image: uint8 [H, W, 3], its GT mask bool [H, W] (None for COCO) and name."""

    image: np.ndarray
    mask: np.ndarray | None
    name: str


@dataclasses.dataclass
class PromptBatch:
    """B prompts in fixed shapes, original-image coordinates.

    point_coords float32 [B, N, 2] (x, y), point_labels int32 [B, N] (PAD_LABEL = empty slot),
    boxes float32 [B, 4] XYXY, box_valid bool [B].
    """

    point_coords: np.ndarray
    point_labels: np.ndarray
    boxes: np.ndarray
    box_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def from_prompts(cls, prompts: Sequence[dict], max_points: int) -> PromptBatch:
        """From `prompts.eval_prompts` dicts; every prompt padded to `max_points` point slots."""
        count = len(prompts)
        coords = np.zeros((count, max_points, 2), np.float32)
        labels = np.full((count, max_points), PAD_LABEL, np.int32)
        boxes = np.zeros((count, 4), np.float32)
        box_valid = np.zeros((count,), bool)
        for i, prompt in enumerate(prompts):
            if prompt.get("box") is not None:
                boxes[i] = prompt["box"]
                box_valid[i] = True
            if prompt.get("point_coords") is not None:
                n = len(prompt["point_coords"])
                if n > max_points:
                    raise ValueError(f"prompt with {n} points, but max_points={max_points}")
                coords[i, :n] = prompt["point_coords"]
                labels[i, :n] = prompt["point_labels"]
        return cls(coords, labels, boxes, box_valid)

    @classmethod
    def from_boxes(cls, boxes: np.ndarray, max_points: int = 1) -> PromptBatch:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        count = len(boxes)
        return cls(
            np.zeros((count, max_points, 2), np.float32),
            np.full((count, max_points), PAD_LABEL, np.int32),
            boxes,
            np.ones((count,), bool),
        )


@dataclasses.dataclass
class Prediction:
    """masks bool [B, H, W] at the original size, predicted IoU [B], DRP weight a1 [B] or None."""

    masks: np.ndarray
    iou_predictions: np.ndarray
    drp_a1: np.ndarray | None = None


@runtime_checkable
class Predictor(Protocol):
    """What the evaluation loop needs from a model; inject one to test the loop (see Oracle)."""

    def embed(self, images: Sequence[np.ndarray]) -> list: ...

    def predict(self, sample: Sample, embedding, prompts: PromptBatch) -> Prediction: ...


class OraclePredictor:
    """Returns the ground-truth mask for every prompt: the loop must report 100 everywhere."""

    def embed(self, images):
        return [None] * len(images)

    def predict(self, sample: Sample, embedding, prompts: PromptBatch) -> Prediction:
        if sample.mask is None:
            raise ValueError("OraclePredictor needs samples with a ground-truth mask")
        masks = np.broadcast_to(sample.mask, (len(prompts), *sample.mask.shape))
        return Prediction(np.array(masks), np.ones(len(prompts), np.float32))


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """1-D mesh `('data',)` over `devices` (default: all local devices). Auto axes: the Stable-SAM
    plugin's bilinear gather does not type-check under Explicit sharding (jax-stack notes)."""
    devices = list(jax.local_devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


@dataclasses.dataclass
class Embedding:
    """Features of an encoded batch (replicated) and where this image sits in it."""

    features: jax.Array
    index: int
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    gt_mask: jax.Array | None = None  # uploaded once, shared by the models of an encoder group


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Pads axis 0 to `rows` by repeating the last row (valid inputs; the outputs are dropped)."""
    if array.shape[0] == rows:
        return array
    return np.concatenate([array, np.repeat(array[-1:], rows - array.shape[0], axis=0)], axis=0)


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(encoder_graphdef, encoder_state, pixels):
    # The encoder alone: SAM, Stable-SAM, DT-SAM and PT-SAM share one compilation.
    return nnx.merge(encoder_graphdef, encoder_state)(pixels)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("alpha_key",))
def _decode(graphdef, state, features, index, coords, labels, boxes, box_valid, *, alpha_key):
    """Single-mask decode of a prompt batch on image `index` of an encoded batch."""
    model = nnx.merge(graphdef, state)
    embedding = jax.lax.dynamic_index_in_dim(features, index, axis=0, keepdims=True)
    low_res, iou, intermediates = model.decode_padded(
        embedding, coords, labels, boxes, box_valid, multimask_output=False
    )
    alpha = None if alpha_key is None else intermediates[alpha_key][:, 0]
    return low_res[:, 0], iou[:, 0], alpha


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _masks_at_original_size(img_size, low_res, input_size, original_size):
    """`Sam.postprocess_masks` (same ops, same order) thresholded at `Sam.mask_threshold`.

    A function of sizes only, so all models share one compilation per image size (there are as
    many sizes as images in the HQ sets); a test pins it to `postprocess_masks`.
    """
    logits = ops.resize_bilinear(low_res, (img_size, img_size))
    logits = logits[..., : input_size[0], : input_size[1]]
    return ops.resize_bilinear(logits, tuple(original_size)) > Sam.mask_threshold


def _window_min(x: jax.Array, size: int, axis: int) -> jax.Array:
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


def _boundary_band(masks: jax.Array, width: int) -> jax.Array:
    """`metrics.mask_boundary` on device: mask AND NOT its (2w+1)-square erosion, outside = 0."""
    x = masks.astype(jnp.uint8)
    size = 2 * width + 1
    pad = [(0, 0)] * x.ndim
    for axis in (x.ndim - 2, x.ndim - 1):
        pad_axis = list(pad)
        pad_axis[axis] = (width, width)
        x = _window_min(jnp.pad(x, pad_axis), size, axis)
    return masks & (x == 0)


def _mask_counts(masks: jax.Array, gt: jax.Array, width: int) -> dict[str, jax.Array]:
    """Pixel counts from which `metrics` derives IoU, boundary IoU and stability exactly."""
    axes = (-2, -1)
    pred_band, gt_band = _boundary_band(masks, width), _boundary_band(gt, width)
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
def _device_metric_counts(img_size, low_res, input_size, original_size, width, gt):
    masks = _masks_at_original_size(img_size, low_res, input_size, original_size)
    return _mask_counts(masks, gt, width)


def metrics_from_counts(counts: Mapping[str, np.ndarray], count: int) -> dict[str, float]:
    """Per-image mIoU / mBIoU / mSF (0-100) from `_mask_counts` of the first `count` rows, with
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


class SamEvalPredictor:
    """A JAX `Sam` (or Stable-SAM) behind the `Predictor` interface, sharded over `mesh`.

    Preprocessing is `SamPredictor`'s (PIL resize of the long side, normalize, zero-pad), so its
    masks are the ones `SamPredictor.predict(..., multimask_output=False)` gives.
    """

    def __init__(self, model: Sam, *, mesh: jax.sharding.Mesh | None = None, max_points: int = 10):
        self.model = model
        self.mesh = mesh if mesh is not None else data_mesh()
        self.num_devices = self.mesh.size
        self.max_points = max_points
        self.transform = ResizeLongestSide(model.img_size)
        self._replicated = NamedSharding(self.mesh, P())
        self._batch_sharded = NamedSharding(self.mesh, P(DATA_AXIS))
        self._graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, self._replicated)
        self._encoder_graphdef = nnx.graphdef(model.image_encoder)
        self._encoder_state = self._state["image_encoder"]
        self.alpha_key = self._find_alpha_key(model)

    @staticmethod
    def _find_alpha_key(model: Sam) -> str | None:
        config = model.plugin_config
        if config is None or not config.use_drp or not config.dsp_layers:
            return None
        return f"layer{min(config.dsp_layers)}{DRP_ALPHA_SUFFIX}"

    def same_encoder(self, other) -> bool:
        """True when `other` computes identical embeddings (same graph, weights and mesh)."""
        if not isinstance(other, SamEvalPredictor) or other.mesh != self.mesh:
            return False
        if nnx.graphdef(self.model.image_encoder) != nnx.graphdef(other.model.image_encoder):
            return False
        mine = jax.tree.leaves(nnx.state(self.model.image_encoder))
        theirs = jax.tree.leaves(nnx.state(other.model.image_encoder))
        return len(mine) == len(theirs) and all(
            a.shape == b.shape and bool(jnp.array_equal(a, b)) for a, b in zip(mine, theirs)
        )

    def embed(self, images: Sequence[np.ndarray], rows: int | None = None) -> list[Embedding]:
        """Encodes the images in one call, the batch padded to `rows` (default: the image count)
        rounded up to the device count. A fixed `rows` keeps a dataset's last, shorter batch from
        compiling the encoder again."""
        size = self.model.img_size
        rows = _round_up(max(rows or len(images), len(images)), self.num_devices)
        pixels = np.zeros((rows, size, size, 3), np.float32)
        mean, std = np.asarray(PIXEL_MEAN, np.float32), np.asarray(PIXEL_STD, np.float32)
        input_sizes = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images must be uint8 HxWx3, got {image.dtype} {image.shape}")
            resized = self.transform.apply_image(np.ascontiguousarray(image))
            pixels[i, : resized.shape[0], : resized.shape[1]] = (resized - mean) / std
            input_sizes.append(resized.shape[:2])
        pixels = jax.device_put(pixels, self._batch_sharded)
        features = _encode(self._encoder_graphdef, self._encoder_state, pixels)
        features = jax.device_put(features, self._replicated)
        return [
            Embedding(features, i, tuple(input_sizes[i]), tuple(images[i].shape[:2]))
            for i in range(len(images))
        ]

    def _dispatch(self, embedding: Embedding, prompts: PromptBatch, rows: int | None):
        """Decodes all prompts in one call; `rows` pads the batch (default: to the device count).
        Returns device arrays (low-res logits, predicted IoU, a1 or None): nothing waits."""
        count = len(prompts)
        rows = _round_up(max(rows or count, count), self.num_devices)
        original = embedding.original_size
        coords = self.transform.apply_coords(prompts.point_coords, original).astype(np.float32)
        boxes = self.transform.apply_boxes(prompts.boxes, original).astype(np.float32)
        labels = prompts.point_labels.astype(np.int32)
        if coords.shape[1] < self.max_points:
            # One decoder shape for every prompt type: pad every batch to max_points slots.
            extra = self.max_points - coords.shape[1]
            coords = np.pad(coords, ((0, 0), (0, extra), (0, 0)))
            labels = np.pad(labels, ((0, 0), (0, extra)), constant_values=PAD_LABEL)
        arrays = [
            jax.device_put(_pad_rows(a, rows), self._batch_sharded)
            for a in (coords, labels, boxes, prompts.box_valid)
        ]
        return _decode(
            self._graphdef,
            self._state,
            embedding.features,
            embedding.index,
            *arrays,
            alpha_key=self.alpha_key,
        )

    def predict(
        self, sample: Sample, embedding: Embedding, prompts: PromptBatch, rows: int | None = None
    ) -> Prediction:
        """Masks at the original size on the host (what COCO and custom metrics need)."""
        count = len(prompts)
        low_res, iou, alpha = self._dispatch(embedding, prompts, rows)
        masks = _masks_at_original_size(
            self.model.img_size, low_res, embedding.input_size, embedding.original_size
        )
        return Prediction(
            np.asarray(masks)[:count],
            np.asarray(iou)[:count],
            None if alpha is None else np.asarray(alpha)[:count],
        )

    def predict_metrics(
        self, sample: Sample, embedding: Embedding, prompts: PromptBatch
    ) -> Callable[[], dict[str, float]]:
        """Upsampling, thresholding and the metrics' pixel counts on the device; only counts come
        back. Returns a function that waits for them and gives `_image_metrics`' dict, so the
        caller can queue further work first."""
        if embedding.gt_mask is None:
            embedding.gt_mask = jax.device_put(np.asarray(sample.mask, bool), self._replicated)
        count = len(prompts)
        low_res, _, alpha = self._dispatch(embedding, prompts, None)
        counts = _device_metric_counts(
            self.model.img_size,
            low_res,
            embedding.input_size,
            embedding.original_size,
            metrics.boundary_width(embedding.original_size),
            embedding.gt_mask,
        )

        def result() -> dict[str, float]:
            values = metrics_from_counts(jax.device_get(counts), count)
            if alpha is not None:
                values["drp_a1"] = float(np.mean(np.asarray(alpha)[:count]))
            return values

        return result


def as_predictors(
    models, *, mesh: jax.sharding.Mesh | None = None, max_points: int = 10
) -> dict[str, Predictor]:
    """{name: Predictor} from a mapping name -> Sam | ModelSpec | Predictor, or a list of specs."""
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = []
        for model in models:
            if not isinstance(model, ModelSpec):
                raise TypeError(
                    "a list of models must hold ModelSpecs (they carry names); pass a dict "
                    f"{{name: model}} for built models, got {type(model).__name__}"
                )
            items.append((model.name, model))
    if not items:
        raise ValueError("no models to evaluate")
    predictors: dict[str, Predictor] = {}
    for name, model in items:
        _check_name(name, "model")
        if name in predictors:
            raise ValueError(f"two models are named {name!r}")
        if isinstance(model, ModelSpec):
            model = model.build()
        if isinstance(model, Sam):
            if mesh is None:
                mesh = data_mesh()
            predictors[name] = SamEvalPredictor(model, mesh=mesh, max_points=max_points)
        elif isinstance(model, Predictor):
            predictors[name] = model
        else:
            raise TypeError(
                f"model {name!r} is a {type(model).__name__}; expected a Sam, a ModelSpec or an "
                "object with embed() and predict() (the Predictor protocol)"
            )
    return predictors


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or name == POOLED:
        raise ValueError(f"{what} name must be a non-empty string other than {POOLED!r}: {name!r}")


def encoder_groups(predictors: Mapping[str, Predictor]) -> list[list[str]]:
    """Model names grouped so that each group can share one image embedding."""
    groups: list[list[str]] = []
    for name, predictor in predictors.items():
        for group in groups:
            leader = predictors[group[0]]
            if isinstance(leader, SamEvalPredictor) and leader.same_encoder(predictor):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


# --------------------------------------------------------------------------------------------------
# Datasets


class _SampleSource:
    """Random access to `Sample`s, capped at `max_images`."""

    def __init__(self, source, max_images: int | None):
        self.source = source
        self.length = len(source) if max_images is None else min(len(source), int(max_images))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        item = self.source[index]
        if isinstance(item, Sample):
            return item
        if isinstance(item, dict):  # a record source not wrapped in EvalSource
            image, mask, name = EvalSource([item])[0]
        else:
            image, mask, *rest = item
            name = rest[0] if rest else f"image_{index:06d}"
        return Sample(np.asarray(image), np.asarray(mask, dtype=bool), str(name))


def as_sample_sources(datasets, max_images: int | None = None) -> dict[str, _SampleSource]:
    """{name: source} from a mapping name -> DatasetSpec | EvalSource | record source | sequence
    of (image, mask[, name]), or a list of DatasetSpecs."""
    if isinstance(datasets, Mapping):
        items = list(datasets.items())
    else:
        items = [(spec.name, spec) for spec in datasets]
    sources = {}
    for name, dataset in items:
        _check_name(name, "dataset")
        cap = max_images
        if isinstance(dataset, DatasetSpec):
            if dataset.max_images is not None:
                cap = dataset.max_images if cap is None else min(cap, dataset.max_images)
            dataset = dataset.open()
        sources[name] = _SampleSource(dataset, cap)
    return sources


# --------------------------------------------------------------------------------------------------
# The loop


class Progress:
    """One status line: rewritten in place on a terminal, printed every `interval` s otherwise."""

    def __init__(self, total: int, label: str, enabled: bool = True, interval: float = 10.0):
        self.total, self.label, self.enabled, self.interval = total, label, enabled, interval
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        finished = done >= self.total
        if not self.enabled or not (self.tty or finished or now - self.last >= self.interval):
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        line = (
            f"eval {self.label}: {done}/{self.total} images, {rate:.2f} img/s, "
            f"elapsed {elapsed:.0f}s, eta {eta:.0f}s"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if finished else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _max_points(prompt_types: Sequence[str]) -> int:
    return max([NUM_POINTS.get(t, 1) for t in prompt_types] + [1])


def _image_metrics(prediction: Prediction, gt: np.ndarray) -> dict[str, float]:
    masks = np.asarray(prediction.masks, dtype=bool)
    if masks.shape[1:] != gt.shape:
        raise ValueError(f"predicted masks {masks.shape[1:]} but ground truth {gt.shape}")
    result = {
        "miou": 100.0 * float(np.mean(metrics.mask_iou_batch(masks, gt))),
        "mbiou": 100.0 * float(np.mean(metrics.boundary_iou_batch(masks, gt))),
        "msf": 100.0 * float(metrics.stability_score(masks)),
    }
    if prediction.drp_a1 is not None:
        result["drp_a1"] = float(np.mean(prediction.drp_a1))
    return result


def _summarize(per_image: Mapping[str, Sequence[float]]) -> dict:
    """Means of the per-image values (NaN-free by construction) plus the image count."""
    count = len(per_image["miou"])
    summary = {
        key: float(np.mean(per_image[key])) if count else float("nan") for key in METRIC_KEYS
    }
    if per_image.get("drp_a1"):
        summary["drp_a1"] = float(np.mean(per_image["drp_a1"]))
    summary["num_images"] = count
    return summary


def _load_with_prompts(source, index, prompt_types, num_prompts, seed):
    sample = source[index]
    if sample.mask.shape != sample.image.shape[:2]:
        raise ValueError(
            f"{sample.name}: mask {sample.mask.shape} and image {sample.image.shape[:2]} differ"
        )
    if not sample.mask.any():
        return sample, None
    per_image_seed = image_seed(sample.name, seed)
    prompts = {
        t: eval_prompts(sample.mask, t, num=num_prompts, seed=per_image_seed) for t in prompt_types
    }
    return sample, prompts


def _prefetched(items: Iterable, fn: Callable, workers: int, lookahead: int):
    """fn(item) for each item, computed up to `lookahead` items ahead on `workers` threads."""
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def evaluate_report(
    models,
    datasets,
    prompt_types: Sequence[str] = DEFAULT_PROMPT_TYPES,
    num_prompts: int = 20,
    seed: int = 0,
    *,
    max_images: int | None = None,
    image_batch_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    keep_per_image: bool = True,
    loader_workers: int = 2,
    metric_workers: int = 2,
    metrics_on_device: bool = True,
) -> dict:
    """Runs every model on every dataset and prompt type; returns the report `run` saves.

    models: {name: Sam | ModelSpec | Predictor} or a list of ModelSpecs. datasets: {name:
    DatasetSpec | EvalSource | record source | sequence of (image, mask, name)} or a list of
    DatasetSpecs. image_batch_size: images per encoder call (default: the device count).
    metrics_on_device: JAX models compute the metrics' pixel counts on the device (exactly
    `metrics`' values; a megapixel mask's boundary IoU costs ~0.1 s of host CPU, and the HQ sets
    need ~10^6 of them); other predictors, or False, use `metrics` on host masks with
    `metric_workers` threads.
    Report keys: "results" ({dataset or "pooled": {model: {prompt_type: {"miou", "mbiou",
    "msf", "num_images"[, "drp_a1"]}}}}, values 0-100 except drp_a1), "protocol", "models",
    "datasets" (image counts, skipped images), "per_image" (when kept), "timing", "devices".
    """
    prompt_types = tuple(prompt_types)
    unknown = [t for t in prompt_types if t not in PROMPT_TYPES]
    if unknown or not prompt_types:
        raise ValueError(f"unknown prompt types {unknown}; choose from {PROMPT_TYPES}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    predictors = as_predictors(models, mesh=mesh, max_points=_max_points(prompt_types))
    sources = as_sample_sources(datasets, max_images)
    if not sources:
        raise ValueError("no datasets to evaluate")
    groups = encoder_groups(predictors)
    num_devices = jax.local_device_count()
    batch = max(1, image_batch_size or num_devices)

    per_image: dict = {}
    dataset_info: dict = {}
    started = time.perf_counter()
    total_images = 0
    metric_pool = (
        concurrent.futures.ThreadPoolExecutor(metric_workers) if metric_workers > 0 else None
    )
    try:
        for dataset_name, source in sources.items():
            num = len(source)
            names: list[str | None] = [None] * num
            values = {
                m: {
                    t: {k: [math.nan] * num for k in (*METRIC_KEYS, "drp_a1")} for t in prompt_types
                }
                for m in predictors
            }
            skipped: list[str] = []
            skipped_indices: set[int] = set()
            bar = Progress(num, dataset_name, enabled=progress)
            pending: collections.deque = collections.deque()

            def store(result, model_name, prompt_type, index, values=values):
                for key, value in result().items():
                    values[model_name][prompt_type][key][index] = value

            def drain(limit: int, pending=pending) -> None:
                while len(pending) > limit:
                    store(*pending.popleft())

            loaded = _prefetched(
                range(num),
                lambda i, source=source: (
                    i,
                    *_load_with_prompts(source, i, prompt_types, num_prompts, seed),
                ),
                loader_workers,
                lookahead=2 * batch,
            )
            chunk: list = []
            done = 0
            for item in loaded:
                chunk.append(item)
                if len(chunk) < batch and item[0] != num - 1:
                    continue
                usable = [(i, s, p) for i, s, p in chunk if p is not None]
                for i, sample, prompts in chunk:
                    names[i] = sample.name
                    if prompts is None:
                        skipped.append(sample.name)
                        skipped_indices.add(i)
                        warnings.warn(
                            f"{dataset_name}: {sample.name} has an empty mask; skipped",
                            stacklevel=2,
                        )
                for group in groups:
                    if not usable:
                        break
                    leader = predictors[group[0]]
                    images = [s.image for _, s, _ in usable]
                    if isinstance(leader, SamEvalPredictor):
                        embeddings = leader.embed(images, rows=batch)
                    else:
                        embeddings = leader.embed(images)
                    for model_name in group:
                        predictor = predictors[model_name]
                        for (index, sample, prompts), embedding in zip(usable, embeddings):
                            for prompt_type in prompt_types:
                                batch_prompts = PromptBatch.from_prompts(
                                    prompts[prompt_type], _max_points(prompt_types)
                                )
                                key = (model_name, prompt_type, index)
                                if metrics_on_device and hasattr(predictor, "predict_metrics"):
                                    # Only pixel counts come back; queue freely so the device
                                    # runs ahead of the host.
                                    result = predictor.predict_metrics(
                                        sample, embedding, batch_prompts
                                    )
                                    pending.append((result, *key))
                                    drain(64)
                                    continue
                                prediction = predictor.predict(sample, embedding, batch_prompts)
                                if metric_pool is None:
                                    value = _image_metrics(prediction, sample.mask)
                                    pending.append((lambda value=value: value, *key))
                                else:
                                    future = metric_pool.submit(
                                        _image_metrics, prediction, sample.mask
                                    )
                                    pending.append((future.result, *key))
                                # Bounded: each pending entry holds B full-size masks.
                                drain(4 * max(1, metric_workers))
                done += len(chunk)
                chunk = []
                bar.update(done)
            drain(0)
            total_images += num - len(skipped)

            kept = [i for i in range(num) if i not in skipped_indices]
            per_image[dataset_name] = {
                "names": [names[i] for i in kept],
                "values": {
                    m: {
                        t: {
                            k: [v[i] for i in kept]
                            for k, v in values[m][t].items()
                            if not all(math.isnan(x) for x in v)
                        }
                        for t in prompt_types
                    }
                    for m in predictors
                },
            }
            dataset_info[dataset_name] = {"num_images": len(kept), "skipped_empty_masks": skipped}
    finally:
        if metric_pool is not None:
            metric_pool.shutdown(wait=True)
    elapsed = time.perf_counter() - started

    results = {
        name: {
            m: {t: _summarize(per_image[name]["values"][m][t]) for t in prompt_types}
            for m in predictors
        }
        for name in sources
    }
    pooled = {}
    for m in predictors:
        pooled[m] = {}
        for t in prompt_types:
            joined: dict[str, list] = {}
            for name in sources:
                for key, vals in per_image[name]["values"][m][t].items():
                    joined.setdefault(key, []).extend(vals)
            joined.setdefault("miou", [])
            pooled[m][t] = _summarize(joined)
    results[POOLED] = pooled

    report = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "protocol": {
            "prompt_types": list(prompt_types),
            "num_prompts": num_prompts,
            "seed": seed,
            "multimask_output": False,
            "mask_threshold": 0.0,
            "boundary_dilation_ratio": 0.02,
            "prompt_seed": "prompts.image_seed(image name, seed)",
        },
        "models": {name: _describe_predictor(name, p, models) for name, p in predictors.items()},
        "datasets": dataset_info,
        "results": results,
        "timing": {
            "seconds": elapsed,
            "images": total_images,
            "images_per_second": total_images / elapsed if elapsed > 0 else None,
            "encoder_groups": groups,
        },
        "devices": {
            "count": num_devices,
            "platform": jax.default_backend(),
            "kind": jax.local_devices()[0].device_kind,
        },
    }
    if keep_per_image:
        report["per_image"] = per_image
    return report


def _describe_predictor(name: str, predictor, models) -> dict:
    spec = models.get(name) if isinstance(models, Mapping) else None
    if spec is None and not isinstance(models, Mapping):
        spec = next((m for m in models if getattr(m, "name", None) == name), None)
    if isinstance(spec, ModelSpec):
        return spec.describe()
    if isinstance(predictor, SamEvalPredictor):
        model = predictor.model
        return {
            "model_type": model.model_type,
            "kind": "sam" if model.plugin_config is None else "stable_sam",
            "in_memory": True,
        }
    return {"predictor": type(predictor).__name__}


def evaluate(
    models,
    datasets,
    prompt_types: Sequence[str] = DEFAULT_PROMPT_TYPES,
    num_prompts: int = 20,
    seed: int = 0,
    **options,
) -> dict:
    """Pooled results `{model: {prompt_type: {"miou", "mbiou", "msf", "num_images"[, "drp_a1"]}}}`
    (0-100) over all images of all datasets; options as `evaluate_report`."""
    options.setdefault("keep_per_image", False)
    report = evaluate_report(models, datasets, prompt_types, num_prompts, seed, **options)
    return report["results"][POOLED]


# --------------------------------------------------------------------------------------------------
# COCO


def _bucket(n: int, buckets: Sequence[int] = (1, 4, 16, 64, 256)) -> int:
    for b in buckets:
        if n <= b:
            return b
    return _round_up(n, buckets[-1])


class _LastImageEmbeddings:
    """The latest image's embedding per encoder group: the COCO loop shows each image to every
    model and IoU bin in turn, so models sharing an encoder encode it once."""

    def __init__(self):
        self.key: bytes | None = None
        self.embeddings: dict[int, Any] = {}

    def get(self, image: np.ndarray, group: int, predictor: Predictor):
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        key += repr(image.shape).encode()
        if key != self.key:
            self.key, self.embeddings = key, {}
        if group not in self.embeddings:
            self.embeddings[group] = predictor.embed([image])[0]
        return self.embeddings[group]


def coco_predict_fn(
    predictor: Predictor, cache: _LastImageEmbeddings | None = None, group: int = 0
) -> coco_lib.PredictFn:
    """`coco.evaluate_coco`'s predict_fn: all boxes of an image in one call, score = predicted IoU."""

    def predict(image: np.ndarray, boxes: np.ndarray):
        if cache is None:
            embedding = predictor.embed([image])[0]
        else:
            embedding = cache.get(image, group, predictor)
        prompts = PromptBatch.from_boxes(boxes)
        sample = Sample(image, None, "")
        if isinstance(predictor, SamEvalPredictor):
            # Bucketed prompt counts: instance counts vary, recompiling for each would dominate.
            prediction = predictor.predict(sample, embedding, prompts, rows=_bucket(len(boxes)))
        else:
            prediction = predictor.predict(sample, embedding, prompts)
        return prediction.masks, prediction.iou_predictions

    return predict


def bin_name(iou_bin: Sequence[float]) -> str:
    return f"{iou_bin[0]:g}-{iou_bin[1]:g}"


def evaluate_coco_models(
    models,
    coco_sets,
    seed: int = 0,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> dict:
    """Noisy-box mask mAP: `{set: {model: {"0.5-0.6": {"segm_mAP", "segm_mAP50",
    "num_instances", "iou_bin"}}}}` (0-100). coco_sets: {name: CocoSpec} or a list of them.

    Same numbers as `coco.evaluate_coco` per model and bin (each image's boxes depend only on
    seed and image id), but image-major: an image is loaded and encoded once for all models
    sharing an encoder and all bins, and scored per (model, bin) at the end.
    """
    predictors = models if _all_predictors(models) else as_predictors(models, mesh=mesh)
    group_of = {name: i for i, group in enumerate(encoder_groups(predictors)) for name in group}
    items = (
        list(coco_sets.items())
        if isinstance(coco_sets, Mapping)
        else [(spec.name, spec) for spec in coco_sets]
    )
    results: dict = {}
    for set_name, spec in items:
        _check_coco_paths(spec, set_name)
        coco_gt = coco_lib.load_coco(spec.annotation_file)
        image_ids = sorted(coco_gt.getImgIds())
        if spec.max_images is not None:
            image_ids = image_ids[: spec.max_images]
        bins = [tuple(float(v) for v in b) for b in spec.iou_bins]
        cache = _LastImageEmbeddings()
        predict_fns = {
            name: coco_predict_fn(p, cache, group_of[name]) for name, p in predictors.items()
        }
        detections = {(m, b): [] for m in predictors for b in bins}
        instances = dict.fromkeys(detections, 0)
        bar = Progress(len(image_ids), f"coco {set_name}", enabled=progress)
        for done, image_id in enumerate(image_ids, start=1):
            for model_name in predictors:
                for iou_bin in bins:
                    found, count = coco_lib.detections_for_coco(
                        coco_gt, spec.image_dir, predict_fns[model_name], iou_bin, seed, [image_id]
                    )
                    detections[(model_name, iou_bin)].extend(found)
                    instances[(model_name, iou_bin)] += count
            bar.update(done)
        results[set_name] = {}
        for model_name in predictors:
            results[set_name][model_name] = {}
            for iou_bin in bins:
                stats = coco_lib.coco_segm_stats(
                    coco_gt, detections[(model_name, iou_bin)], image_ids
                )
                results[set_name][model_name][bin_name(iou_bin)] = {
                    "segm_mAP": float(stats[0] * 100),
                    "segm_mAP50": float(stats[1] * 100),
                    "num_instances": instances[(model_name, iou_bin)],
                    "iou_bin": list(iou_bin),
                }
    return results


def _check_coco_paths(spec: CocoSpec, set_name: str | None = None) -> None:
    set_name = set_name or spec.name
    for path, what in ((spec.annotation_file, "annotation_file"), (spec.image_dir, "image_dir")):
        if not path or not os.path.exists(path):
            raise FileNotFoundError(
                f"COCO set {set_name!r}: {what} {path!r} does not exist; set "
                f"--config.coco.{set_name}.{what}=PATH or disable the set"
            )


def _all_predictors(models) -> bool:
    return isinstance(models, Mapping) and all(
        isinstance(m, Predictor) and not isinstance(m, (Sam, ModelSpec)) for m in models.values()
    )


# --------------------------------------------------------------------------------------------------
# Tables


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"


def _images(count) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def _model_table(per_model: Mapping[str, Mapping[str, Mapping]], prompt_types) -> list[str]:
    header = ["Model"] + [PROMPT_TYPE_TITLES.get(t, t) for t in prompt_types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_type in per_model.items():
        cells = [model]
        for t in prompt_types:
            m = by_type.get(t, {})
            cells.append(" / ".join(_fmt(m.get(k)) for k in METRIC_KEYS))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _drp_table(per_model, prompt_types) -> list[str]:
    rows = {
        model: by_type
        for model, by_type in per_model.items()
        if any("drp_a1" in by_type.get(t, {}) for t in prompt_types)
    }
    if not rows:
        return []
    header = ["Model"] + [PROMPT_TYPE_TITLES.get(t, t) for t in prompt_types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_type in rows.items():
        cells = [model] + [
            "-" if "drp_a1" not in by_type.get(t, {}) else f"{by_type[t]['drp_a1']:.3f}"
            for t in prompt_types
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _prompt_types_of(per_model: Mapping) -> list[str]:
    seen: list[str] = []
    for by_type in per_model.values():
        for t in by_type:
            if t not in seen:
                seen.append(t)
    return seen


def format_table(results: Mapping) -> str:
    """Markdown in the shape of the paper's Table 2 (cells: mIoU / mBIoU / mSF, 0-100).

    `results` is a full report (`evaluate_report` / results.json: one table per dataset, then
    pooled, then mean DRP weights a1 and COCO mAP when present) or the pooled mapping `evaluate`
    returns (one table)."""
    if "results" not in results:
        types = _prompt_types_of(results)
        lines = ["Each cell: mIoU / mBIoU / mSF (0-100).", ""]
        lines += _model_table(results, types)
        drp = _drp_table(results, types)
        if drp:
            lines += ["", "Mean DRP routing weight a1 (deformable features):", ""] + drp
        return "\n".join(lines) + "\n"

    by_dataset = results["results"]
    info = results.get("datasets", {})
    protocol = results.get("protocol", {})
    types = protocol.get("prompt_types") or _prompt_types_of(by_dataset.get(POOLED, {}))
    lines = [
        "# Stable-SAM evaluation",
        "",
        f"{protocol.get('num_prompts', '?')} prompts per image and prompt type, seed "
        f"{protocol.get('seed', '?')}, single-mask output. Each cell: mIoU / mBIoU / mSF (0-100).",
    ]
    for name, per_model in by_dataset.items():
        if name == POOLED:
            continue
        count = info.get(name, {}).get("num_images", "?")
        lines += ["", f"## {name} ({_images(count)})", ""] + _model_table(per_model, types)
    if POOLED in by_dataset:
        datasets = [n for n in by_dataset if n != POOLED]
        count = sum(info.get(n, {}).get("num_images", 0) for n in datasets)
        lines += [
            "",
            f"## Pooled: {', '.join(datasets)} ({_images(count)})",
            "",
        ] + _model_table(by_dataset[POOLED], types)
        drp = _drp_table(by_dataset[POOLED], types)
        if drp:
            lines += ["", "## Mean DRP routing weight a1 (pooled)", ""] + drp
    for set_name, per_model in results.get("coco", {}).items():
        bins = _prompt_types_of(per_model)
        header = ["Model"] + [f"N-Box ({b}) {k}" for b in bins for k in ("mAP", "mAP50")]
        lines += ["", f"## {set_name}: noisy-box mask AP (COCOeval segm)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model, by_bin in per_model.items():
            cells = [model]
            for b in bins:
                cells += [_fmt(by_bin[b]["segm_mAP"]), _fmt(by_bin[b]["segm_mAP50"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# The job


def _enabled_entries(group) -> list[tuple[str, dict]]:
    if group is None:
        return []
    entries = []
    for name, entry in group.items():
        entry = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
        if entry.pop("enabled", True):
            entries.append((name, entry))
    return entries


def _spec(cls, name: str, entry: dict, what: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(entry) - fields
    if unknown:
        raise ValueError(
            f"{what} {name!r}: unknown fields {sorted(unknown)}; known: {sorted(fields)}"
        )
    for key, value in list(entry.items()):
        if isinstance(value, list):
            entry[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return cls(name=name, **entry)


def specs_from_config(config) -> tuple[list[ModelSpec], list[DatasetSpec], list[CocoSpec]]:
    """The enabled model, dataset and COCO entries of an eval config."""
    models = [_spec(ModelSpec, n, e, "model") for n, e in _enabled_entries(config.models)]
    data_root = config.get("data_root") or None
    datasets = []
    for name, entry in _enabled_entries(config.get("datasets")):
        if entry.get("kind", "layout") == "layout" and not entry.get("root"):
            entry["root"] = data_root
        datasets.append(_spec(DatasetSpec, name, entry, "dataset"))
    coco_sets = [_spec(CocoSpec, n, e, "COCO set") for n, e in _enabled_entries(config.get("coco"))]
    return models, datasets, coco_sets


def run(config, predictors: Mapping[str, Predictor] | None = None) -> dict:
    """The job: evaluate, write `results.json` and `results.md` to config.output_dir, print the
    table. `predictors` replaces the config's models (tests inject an oracle this way)."""
    specs, datasets, coco_sets = specs_from_config(config)
    if predictors is None:
        if not specs:
            raise ValueError("no enabled models in the config (config.models)")
        for spec in specs:
            spec.validate()
        models: Any = specs
    else:
        models = dict(predictors)
    if not datasets and not coco_sets:
        raise ValueError("nothing to evaluate: enable a dataset (config.datasets) or COCO set")
    # Bad paths fail here, before minutes of building large models.
    sources = as_sample_sources(datasets, config.get("max_images"))
    for spec in coco_sets:
        _check_coco_paths(spec)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    mesh = data_mesh()
    built = as_predictors(models, mesh=mesh, max_points=_max_points(config.prompt_types))
    report: dict
    if datasets:
        report = evaluate_report(
            built,
            sources,
            tuple(config.prompt_types),
            int(config.num_prompts),
            int(config.seed),
            image_batch_size=config.get("image_batch_size"),
            progress=bool(config.get("progress", True)),
            keep_per_image=bool(config.get("keep_per_image", True)),
            loader_workers=int(config.get("loader_workers", 2)),
            metric_workers=int(config.get("metric_workers", 2)),
            metrics_on_device=bool(config.get("metrics_on_device", True)),
        )
        if predictors is None:
            report["models"] = {s.name: s.describe() for s in specs}
    else:
        report = {"schema_version": RESULTS_SCHEMA_VERSION, "results": {}}
    if coco_sets:
        report["coco"] = evaluate_coco_models(
            built,
            coco_sets,
            seed=int(config.seed),
            progress=bool(config.get("progress", True)),
        )
    report["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    table = format_table(report)
    with open(output_dir / "results.json", "w") as f:
        json.dump(_jsonable(report), f, indent=1)
    (output_dir / "results.md").write_text(table)
    print(table)
    print(f"wrote {output_dir / 'results.json'} and {output_dir / 'results.md'}", file=sys.stderr)
    return report


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------------------------------
# Config building blocks (used by eval/configs/*.py): every field present, so any of them can be
# overridden from the command line (`--config.models.sam.checkpoint=DIR`).


def base_config(output_dir: str):
    """Top-level fields of an eval config; add entries to `models`, `datasets` and `coco`."""
    import ml_collections
    from ml_collections import config_dict

    config = ml_collections.ConfigDict()
    config.output_dir = output_dir
    # Folder holding HQ-SAM's release (DIS5K/, thin_object_detection/, cascade_psp/); used by
    # "layout" datasets that set no root of their own.
    config.data_root = config_dict.placeholder(str)
    config.prompt_types = DEFAULT_PROMPT_TYPES
    config.num_prompts = 20
    config.seed = 0
    config.max_images = config_dict.placeholder(int)  # per dataset; None = all
    config.image_batch_size = config_dict.placeholder(int)  # images per encoder call
    config.progress = True
    config.keep_per_image = True
    config.loader_workers = 2
    config.metric_workers = 2  # host threads for metrics of masks brought back to the host
    config.metrics_on_device = True  # pixel counts on the accelerator (same values, far faster)
    # Insertion order is table order.
    config.models = ml_collections.ConfigDict(sort_keys=False)
    config.datasets = ml_collections.ConfigDict(sort_keys=False)
    config.coco = ml_collections.ConfigDict(sort_keys=False)
    return config


def model_config(
    model_type: str = "vit_l",
    kind: str = "sam",
    *,
    checkpoint: str | None = None,
    plugins: str | None = None,
    merged: str | None = None,
    random_init: bool = False,
    seed: int = 0,
    dtype: str = "float32",
    attention_impl: str = "reference",
    enabled: bool = True,
):
    import ml_collections
    from ml_collections import config_dict

    def path(value):
        return config_dict.placeholder(str) if value is None else value

    return ml_collections.ConfigDict(
        dict(
            model_type=model_type,
            kind=kind,
            checkpoint=path(checkpoint),
            plugins=path(plugins),
            merged=path(merged),
            random_init=random_init,
            seed=seed,
            dtype=dtype,
            attention_impl=attention_impl,
            enabled=enabled,
        )
    )


def layout_dataset_config(layout: str, *, root: str | None = None, enabled: bool = True):
    import ml_collections
    from ml_collections import config_dict

    return ml_collections.ConfigDict(
        dict(
            kind="layout",
            layout=layout,
            root=config_dict.placeholder(str) if root is None else root,
            max_images=config_dict.placeholder(int),
            allow_unmatched=False,
            enabled=enabled,
        )
    )


def folder_dataset_config(
    image_dir: str | None = None,
    mask_dir: str | None = None,
    *,
    image_exts: tuple[str, ...] = (".jpg", ".jpeg", ".png"),
    mask_exts: tuple[str, ...] = (".png",),
    enabled: bool = True,
):
    import ml_collections
    from ml_collections import config_dict

    return ml_collections.ConfigDict(
        dict(
            kind="folder",
            image_dir=config_dict.placeholder(str) if image_dir is None else image_dir,
            mask_dir=config_dict.placeholder(str) if mask_dir is None else mask_dir,
            image_exts=image_exts,
            mask_exts=mask_exts,
            max_images=config_dict.placeholder(int),
            allow_unmatched=False,
            enabled=enabled,
        )
    )


def scenes_dataset_config(
    num: int = 8, *, seed: int = 0, size: int = 256, max_objects: int = 4, enabled: bool = True
):
    import ml_collections
    from ml_collections import config_dict

    return ml_collections.ConfigDict(
        dict(
            kind="scenes",
            num=num,
            seed=seed,
            size=size,
            max_objects=max_objects,
            max_images=config_dict.placeholder(int),
            enabled=enabled,
        )
    )


def tfds_dataset_config(split: str, *, tfds_dir: str | None = None, enabled: bool = True):
    import ml_collections
    from ml_collections import config_dict

    return ml_collections.ConfigDict(
        dict(
            kind="tfds",
            split=split,
            tfds_dir=config_dict.placeholder(str) if tfds_dir is None else tfds_dir,
            max_images=config_dict.placeholder(int),
            enabled=enabled,
        )
    )


def coco_config(
    annotation_file: str | None = None,
    image_dir: str | None = None,
    *,
    iou_bins=COCO_IOU_BINS,
    enabled: bool = True,
):
    import ml_collections
    from ml_collections import config_dict

    return ml_collections.ConfigDict(
        dict(
            annotation_file=(
                config_dict.placeholder(str) if annotation_file is None else annotation_file
            ),
            image_dir=config_dict.placeholder(str) if image_dir is None else image_dir,
            iou_bins=tuple(tuple(b) for b in iou_bins),
            max_images=config_dict.placeholder(int),
            enabled=enabled,
        )
    )
