"""An export directory's manifest.json: what `commands.export` writes and `ExportedSam` reads.

`read_manifest` refuses, naming the file, a manifest that is not JSON, not an export manifest, of
a newer format, or missing a field the loader reads (a damaged or hand-edited export).
"""

from __future__ import annotations

import json

from .embeddings import ServingError

EXPORT_FORMAT = "stablesam-jax-export"
EXPORT_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MANIFEST_KEYS = (
    *("model_type", "img_size", "low_res_size", "mask_threshold", "encoder_id", "image_format"),
    *("embedding_size", "embedding_dim", "pixel_mean", "pixel_std", "encoder", "decoder"),
)
PART_KEYS = ("artifact", "weights", "weights_sha256")  # of the "encoder" and "decoder" entries


def read_manifest(path: str) -> dict:
    """The manifest as a dict, or a ServingError that names the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServingError(f"{path} is not valid JSON ({e}); re-export the model") from e
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ServingError(f"{path} is not a stablesam-jax export manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
        raise ServingError(
            f"{path} has export format version {version!r}; this loader reads versions up to "
            f"{EXPORT_FORMAT_VERSION}"
        )
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    for part in ("encoder", "decoder"):
        entry = manifest.get(part, {})
        if not isinstance(entry, dict):
            entry = {}
        missing += [f"{part}.{key}" for key in PART_KEYS if part in manifest and key not in entry]
    if missing:
        raise ServingError(f"{path} lacks {missing}: a damaged export; re-export the model")
    return manifest
