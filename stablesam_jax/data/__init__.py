"""Data: synthetic scenes, readers for HQ-SAM's folder layouts, and the Grain training pipeline.

The pipeline names load lazily: importing Grain pulls in JAX, which a script that only reads
folders or generates scenes should not pay for. The TFDS builder (optional dependency) is
`stablesam_jax.data.tfds_builder`.
"""

from .folders import (
    DATASETS,
    HQ_EVAL,
    HQSEG44K_TRAIN,
    DataError,
    FolderLayout,
    find_pairs,
    folder_pairs,
    load_image,
    load_mask,
    load_pair,
)
from .scenes import (
    SceneDataset,
    generate_scene,
    largest_instance,
    write_scene_folder,
)

_PIPELINE_NAMES = (
    "EvalSource",
    "PairSource",
    "RecordSource",
    "TrainConfig",
    "augment",
    "make_eval_source",
    "make_train_dataset",
    "pair_source",
)


def __getattr__(name):
    if name in _PIPELINE_NAMES:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'stablesam_jax.data' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "HQ_EVAL",
    "HQSEG44K_TRAIN",
    "DataError",
    "FolderLayout",
    "SceneDataset",
    "find_pairs",
    "folder_pairs",
    "generate_scene",
    "largest_instance",
    "load_image",
    "load_mask",
    "load_pair",
    "write_scene_folder",
    *_PIPELINE_NAMES,
]
