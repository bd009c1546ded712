"""Serving without the model code: exported `jax.export` artifacts and saved image embeddings.

`export_model` (in `serving.export`, which needs flax and the model code) writes the artifacts;
`ExportedSam` (in `serving.runtime`, jax + numpy + PIL only) loads and runs them.
"""

from .embeddings import EMBEDDING_FORMAT, EMBEDDING_FORMAT_VERSION, weights_digest
from .runtime import (
    DECODER_FILE,
    DECODER_WEIGHTS_FILE,
    ENCODER_FILE,
    ENCODER_WEIGHTS_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    MANIFEST_FILE,
    Embedding,
    ExportedSam,
    ServingError,
    enable_persistent_cache,
    load_embedding,
    save_embedding,
)


def __getattr__(name):
    # Lazy: the exporter imports flax and the model code, which a serving process must not load.
    if name == "export_model":
        from .export import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "Embedding",
    "ExportedSam",
    "ServingError",
    "enable_persistent_cache",
    "export_model",
    "load_embedding",
    "save_embedding",
    "weights_digest",
]
