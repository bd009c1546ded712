"""`segment_anything/utils/transforms.py` without torchvision: the same PIL bilinear resize.

The `*_torch` methods take and return torch tensors as the official ones do; nothing here
imports torch unless a tensor is passed in (`apply_image_torch`, which resizes with torch).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .torch_compat import is_tensor

# Input-frame prompts map back to the original frame within float rounding; values this close
# (in original pixels) outside the image snap onto its border, so a box drawn to the edge of the
# image stays inside it.
_BORDER_SNAP = 1e-2


def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    scale = long_side_length * 1.0 / max(oldh, oldw)
    newh, neww = oldh * scale, oldw * scale
    return int(newh + 0.5), int(neww + 0.5)


class ResizeLongestSide:
    """Resizes images so the longest side is `target_length`, and prompts to match."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> resized uint8, as torchvision's resize on a PIL image (bilinear)."""
        h, w = get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        boxes = self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size)
        return boxes.reshape(-1, 4)

    def apply_coords_torch(self, coords, original_size: tuple[int, ...]):
        """Like `apply_coords` on a torch tensor [..., 2]; returns a float32 tensor on the same
        device (numpy in, float32 numpy out)."""
        if not is_tensor(coords):
            return self.apply_coords(np.asarray(coords), original_size).astype(np.float32)
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.detach().clone().float()
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes, original_size: tuple[int, ...]):
        """Like `apply_boxes` on a torch tensor [B, 4]; returns a float32 tensor [B, 4]."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image):
        """BxCxHxW float tensor -> resized so the long side is `target_length` (torch bilinear
        with antialiasing, as the official method; it may differ slightly from `apply_image`,
        which is what the model expects). The official method computes the size from
        image.shape[0:2] (B, C), a known bug; this one uses H and W."""
        from torch.nn import functional  # a tensor was passed in: torch is already imported

        h, w = get_preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return functional.interpolate(
            image, (h, w), mode="bilinear", align_corners=False, antialias=True
        )

    def restore_coords(self, coords, original_size: tuple[int, int]) -> np.ndarray:
        """The inverse of `apply_coords`: input-frame (x, y) -> original-image pixels (float64
        numpy). Mapping the result forward again gives back the same float32 values (but for a
        value snapped onto the border)."""
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=np.float64, copy=True)
        for axis, old, new in ((0, old_w, new_w), (1, old_h, new_h)):
            c = coords[..., axis] * (old / new)
            near_lo, near_hi = (c < 0) & (c > -_BORDER_SNAP), (c > old) & (c < old + _BORDER_SNAP)
            coords[..., axis] = np.where(near_lo, 0.0, np.where(near_hi, float(old), c))
        return coords

    def restore_boxes(self, boxes, original_size: tuple[int, int]) -> np.ndarray:
        """The inverse of `apply_boxes`: input-frame [B, 4] -> original-image pixels."""
        boxes = np.asarray(boxes).reshape(-1, 2, 2)
        return self.restore_coords(boxes, original_size).reshape(-1, 4)

    get_preprocess_shape = staticmethod(get_preprocess_shape)
