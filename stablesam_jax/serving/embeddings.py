"""Image embeddings on disk: an encoded image saved once and decoded later, anywhere.

A saved embedding is a .npz with the features [g, g, C] (channels last), the original and the
model-input sizes, the encoder's model type and id, a format version and a sha256 of the
features; `load_embedding` checks them all. `ServingError` is the serving side's one error type
(an unusable embedding or export directory).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

# The manifests' weight checksum is the checkpoints' digest helper (one copy), re-exported here.
from ..utils.digest import weights_digest as weights_digest
from ..utils.embedding import ImageEmbedding
from ..utils.io import atomic_write

EMBEDDING_FORMAT = "stablesam-jax-embedding"
EMBEDDING_FORMAT_VERSION = 1


class ServingError(ValueError):
    """An export directory or saved embedding that cannot be used; the message says why."""


# The serving name of the one embedding record (the predictor's and the evaluation's too).
Embedding = ImageEmbedding


def _features_digest(features: np.ndarray) -> str:
    a = np.ascontiguousarray(features, np.float32)
    return hashlib.sha256(f"{a.shape}|".encode() + a.tobytes()).hexdigest()


def save_embedding(
    path, embedding, *, model_type: str | None = None, encoder_id: str | None = None
) -> str:
    """Writes an embedding (an `ImageEmbedding`, from `ExportedSam.encode` or
    `SamPredictor.encode_images`) to a
    .npz with its sizes, model type, format version and a sha256 of the features."""
    features = np.asarray(embedding.features, np.float32)
    if features.ndim == 4 and features.shape[0] == 1:
        features = features[0]
    if features.ndim != 3:
        raise ValueError(f"features must be [g, g, C] (channels last), got {features.shape}")
    model_type = model_type or getattr(embedding, "model_type", None) or "unknown"
    encoder_id = encoder_id if encoder_id is not None else getattr(embedding, "encoder_id", "")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    arrays = dict(
        features=features,
        original_size=np.asarray(embedding.original_size, np.int64),
        input_size=np.asarray(embedding.input_size, np.int64),
        model_type=np.asarray(model_type),
        encoder_id=np.asarray(encoder_id),
        format=np.asarray(EMBEDDING_FORMAT),
        format_version=np.asarray(EMBEDDING_FORMAT_VERSION),
        features_sha256=np.asarray(_features_digest(features)),
    )
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_embedding(path, *, expect_model_type: str | None = None) -> Embedding:
    """Reads a saved embedding, checking its format, version and checksum."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ServingError(f"{path} is not a readable embedding file ({e})") from e
    if str(fields.get("format", "")) != EMBEDDING_FORMAT:
        raise ServingError(f"{path} is not a stablesam-jax embedding (no format tag)")
    version = int(fields["format_version"])
    if version > EMBEDDING_FORMAT_VERSION:
        raise ServingError(
            f"{path} has embedding format version {version}; this reader knows up to "
            f"{EMBEDDING_FORMAT_VERSION}: upgrade stablesam-jax"
        )
    features = fields["features"]
    if _features_digest(features) != str(fields["features_sha256"]):
        raise ServingError(
            f"{path}: features do not match their checksum (file corrupted); recompute it"
        )
    model_type = str(fields["model_type"])
    if expect_model_type is not None and model_type not in (expect_model_type, "unknown"):
        raise ServingError(
            f"{path} was computed by a {model_type} encoder; this decoder is {expect_model_type}"
        )
    return Embedding(
        features=features,
        original_size=tuple(int(v) for v in fields["original_size"]),
        input_size=tuple(int(v) for v in fields["input_size"]),
        model_type=model_type,
        encoder_id=str(fields["encoder_id"]),
    )
