"""The contract between the evaluation loop and a model: a `Sample` and a `PromptBatch` in, a
`Prediction` out, through the two methods of the `Predictor` protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from ..constants import PAD_LABEL


@dataclasses.dataclass
class Sample:
    """One evaluation image: uint8 [H, W, 3], its GT mask bool [H, W] (None for COCO) and name."""

    image: np.ndarray
    mask: np.ndarray | None
    name: str
    # Device copies of `mask` by sharding: uploaded once, shared by every model that scores it.
    _device_masks: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def device_mask(self, sharding: jax.sharding.Sharding) -> jax.Array:
        if sharding not in self._device_masks:
            self._device_masks[sharding] = jax.device_put(np.asarray(self.mask, bool), sharding)
        return self._device_masks[sharding]


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
    """masks bool [B, H, W] at the original size, predicted IoU [B], DRP weights a1 and a2 [B]
    (sampled and regular features) or None."""

    masks: np.ndarray
    iou_predictions: np.ndarray
    drp_a1: np.ndarray | None = None
    drp_a2: np.ndarray | None = None


@runtime_checkable
class Predictor(Protocol):
    """What the evaluation loop needs from a model (`OraclePredictor` tests the loop)."""

    def embed(self, images: Sequence[np.ndarray]) -> list: ...

    def predict(self, sample: Sample, embedding, prompts: PromptBatch) -> Prediction: ...
