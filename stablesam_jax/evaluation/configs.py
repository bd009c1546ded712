"""Building blocks of eval configs (eval/configs/*.py): every field present, so any of them can be
overridden from the command line (`--config.models.sam.checkpoint=DIR`).

`base_config` gives the top level; add `model_config` entries to `models`, the `*_dataset_config`
entries to `datasets` and `coco_config` entries to `coco`. `specs.specs_from_config` reads them.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from .protocol import COCO_IOU_BINS, DEFAULT_PROMPT_TYPES


def base_config(output_dir: str):
    """Top-level fields of an eval config; add entries to `models`, `datasets` and `coco`."""
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
    hq_token_only: bool = False,
):
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
            hq_token_only=hq_token_only,
            enabled=enabled,
        )
    )


def layout_dataset_config(layout: str, *, root: str | None = None, enabled: bool = True):
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
    num: int = 8,
    *,
    seed: int = 0,
    size: int = 256,
    max_objects: int = 4,
    family: str = "shapes",
    enabled: bool = True,
):
    return ml_collections.ConfigDict(
        dict(
            kind="scenes",
            num=num,
            seed=seed,
            size=size,
            max_objects=max_objects,
            family=family,
            max_images=config_dict.placeholder(int),
            enabled=enabled,
        )
    )


def tfds_dataset_config(split: str, *, tfds_dir: str | None = None, enabled: bool = True):
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
