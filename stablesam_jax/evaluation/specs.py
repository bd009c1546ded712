"""What an eval config names: the models, the single-object datasets and the COCO sets.

`specs_from_config` turns a config's enabled entries into `ModelSpec`, `DatasetSpec` and
`CocoSpec`; each spec validates itself and knows how to build its model or open its data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from .. import builder
from .. import checkpoint as ckpt
from ..data import folders
from ..data.pipeline import EvalSource, PairSource
from ..data.scenes import SceneDataset
from ..data.tfds_builder import TfdsRecordSource
from ..modeling.sam import SAM_VARIANTS, Sam
from .protocol import COCO_IOU_BINS


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build one model of the comparison.

    kind "sam": SAM weights from `checkpoint` (a converted or `save_sam` directory) or `merged`
    (a full export, e.g. a DT-SAM / PT-SAM run that retrained decoder weights). kind "stable_sam":
    SAM weights from `checkpoint` plus `plugins` (a plugin checkpoint), or one `merged`
    "stable_sam" export. `random_init=True` allows missing weights to be random (SAM weights from
    `seed`, fresh plugins, which reproduce SAM exactly): for tests and smoke runs only.
    `plugin_options` are `PluginConfig` overrides for kind "stable_sam". `hq_token_only`
    (HQ-SAM models): score the HQ mask alone, as HQ-SAM's own evaluation does, instead of SAM's
    mask plus the HQ mask (the official predictor's default).
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
    hq_token_only: bool = False
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
        if self.hq_token_only and not SAM_VARIANTS[self.model_type].hq:
            raise ValueError(
                f"{where}: hq_token_only=True needs an HQ-SAM model_type (hq_vit_*), "
                f"not {self.model_type!r}"
            )
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
    family: str = "shapes"
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
                SceneDataset(
                    self.num,
                    seed=self.seed,
                    size=self.size,
                    max_objects=self.max_objects,
                    family=self.family,
                )
            )
        if self.kind == "tfds":
            if not self.tfds_dir:
                raise ValueError(
                    f"{where}: kind 'tfds' needs tfds_dir, the prepared dataset's version folder "
                    "(e.g. <data_dir>/hq_seg/1.0.0, written by data.tfds_builder.build_tfds)"
                )
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

    def check_paths(self, set_name: str | None = None) -> None:
        """Raises, naming the override to set, unless both paths exist."""
        set_name = set_name or self.name
        for path, what in (
            (self.annotation_file, "annotation_file"),
            (self.image_dir, "image_dir"),
        ):
            if not path or not os.path.exists(path):
                raise FileNotFoundError(
                    f"COCO set {set_name!r}: {what} {path!r} does not exist; set "
                    f"--config.coco.{set_name}.{what}=PATH or disable the set"
                )


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
