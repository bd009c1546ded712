"""Optional: pack the HQ datasets into a TFDS ArrayRecord dataset and read it back without TensorFlow.

Needs `tensorflow-datasets` (pip, about 200 MB with its dependencies, pyarrow most of it) but not
TensorFlow: TFDS only calls TensorFlow to encode images given as numpy arrays, so this builder
hands it file paths (the original JPEG bytes are stored unchanged) and PIL images (the masks,
re-encoded as canonical 0/255 single-channel PNG). Reading goes through `as_data_source`, which
decodes with PIL; ArrayRecord cannot be read with `as_dataset`.

One split per dataset, named like "dis5k_tr" (TFDS split names cannot hold "-").
`build_tfds(root, data_dir)` validates every pair while writing (a corrupt pair stops the build
with the `DataError` naming it, or is left out with `skip_corrupt=True`), and
`TfdsRecordSource(data_dir, split)` is a record source for `pipeline.make_train_dataset` and
`pipeline.make_eval_source`; `tfds.builder_from_directory` also reopens the data without this code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .folders import HQ_EVAL, HQSEG44K_TRAIN, DataError, find_pairs, load_pair

logger = logging.getLogger(__name__)

BUILDER_NAME = "hq_seg"
VERSION = "1.0.0"


def split_name(dataset: str) -> str:
    """TFDS split name of a registered dataset: "DIS5K-TR" -> "dis5k_tr"."""
    return dataset.lower().replace("-", "_")


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "stablesam_jax.data.tfds_builder needs `pip install tensorflow-datasets` (TensorFlow "
            "itself is not needed); the folder readers in stablesam_jax.data.folders need neither."
        ) from error
    return tfds


def _example(image_path, mask_path, name: str) -> dict:
    image, mask = load_pair(image_path, mask_path)  # validates decoding and sizes
    with Image.open(image_path) as opened:
        stored_as_is = opened.format == "JPEG" and opened.mode == "RGB"
    return {
        # Unchanged bytes when possible: no second JPEG generation loss, no TensorFlow.
        "image": os.fspath(image_path) if stored_as_is else Image.fromarray(image),
        "mask": Image.fromarray(mask.astype(np.uint8) * 255),
        "name": name,
    }


def make_builder(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    datasets: Sequence[str] = HQSEG44K_TRAIN + HQ_EVAL,
    *,
    skip_corrupt: bool = False,
):
    """A TFDS builder (not yet prepared) over the registered `datasets` found under `root`."""
    tfds = _tfds()
    root, datasets = os.fspath(root), tuple(datasets)

    # Unregistered: each call defines a fresh class over its own root and datasets.
    with tfds.core.registered.skip_registration():

        class HqSeg(tfds.core.GeneratorBasedBuilder):
            name = BUILDER_NAME
            VERSION = tfds.core.Version(VERSION)

            def _info(self):
                return tfds.core.DatasetInfo(
                    builder=self,
                    description="HQ-SAM's image/mask pairs (HQSeg-44K and the HQ eval sets).",
                    features=tfds.features.FeaturesDict(
                        {
                            "image": tfds.features.Image(
                                shape=(None, None, 3), encoding_format="jpeg"
                            ),
                            "mask": tfds.features.Image(
                                shape=(None, None, 1), encoding_format="png"
                            ),
                            "name": tfds.features.Text(),
                        }
                    ),
                )

            def _split_generators(self, dl_manager):
                return {split_name(name): self._generate_examples(name) for name in datasets}

            def _generate_examples(self, dataset):
                for image_path, mask_path in find_pairs(root, dataset):
                    name = f"{dataset}/{image_path.stem}"
                    try:
                        example = _example(image_path, mask_path, name)
                    except DataError as error:
                        if not skip_corrupt:
                            raise
                        logger.warning("leaving out corrupt pair: %s", error)
                        continue
                    yield name, example

    return HqSeg(data_dir=os.fspath(data_dir), file_format="array_record")


def build_tfds(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    datasets: Sequence[str] = HQSEG44K_TRAIN + HQ_EVAL,
    *,
    skip_corrupt: bool = False,
):
    """Write the ArrayRecord dataset under `data_dir` (no-op if already there); returns the builder."""
    builder = make_builder(root, data_dir, datasets, skip_corrupt=skip_corrupt)
    builder.download_and_prepare()
    return builder


class TfdsRecordSource:
    """Record source over splits of a prepared dataset: `{"image", "masks": [1, H, W], "name"}`.

    `data_dir` is the prepared version folder (e.g. `<data_dir>/hq_seg/1.0.0`) or a builder;
    several splits are concatenated in order.
    """

    def __init__(self, data_dir_or_builder, splits: str | Sequence[str]):
        tfds = _tfds()
        builder = data_dir_or_builder
        if isinstance(builder, (str, os.PathLike)):
            builder = tfds.builder_from_directory(os.fspath(builder))
        splits = [splits] if isinstance(splits, str) else list(splits)
        sources = builder.as_data_source()
        self._sources = [sources[split_name(split)] for split in splits]
        self._offsets = np.cumsum([0] + [len(source) for source in self._sources])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        which = int(np.searchsorted(self._offsets, index, side="right") - 1)
        example = self._sources[which][int(index - self._offsets[which])]
        name = example["name"]
        return {
            "image": example["image"],
            "masks": (example["mask"][..., 0] > 128)[None],
            "name": name.decode() if isinstance(name, bytes) else str(name),
        }
