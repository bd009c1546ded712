"""The one record of an encoded image, shared by the predictor, the evaluation and serving."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class ImageEmbedding:
    """One encoded image and the sizes that map its masks back to the original image.

    features: [g, g, C] channels last (numpy or a JAX array on any device), or, with `index`, a
        batch [B, g, g, C] that stays on the devices and holds this image at row `index` (the
        evaluation encodes images in batches and decodes straight from the batch).
    original_size: (H, W) of the image given; input_size: (h, w) after resizing the long side
        to the model's input size.
    model_type / encoder_id: which model made it (`"unknown"` / `""` when not recorded), so an
        embedding is never decoded by another model's decoder.
    """

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_type: str = "unknown"
    encoder_id: str = ""
    index: int | None = None
