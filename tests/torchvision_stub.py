"""A stand-in for the few torchvision functions the official `segment_anything` imports.

torchvision is a 5.5 GB install here; the official package uses it only for a PIL resize and
batched NMS. These stand-ins do the same on PIL images and torch tensors, so the tests can run the
official `SamPredictor` and `SamAutomaticMaskGenerator` unchanged.
"""

from __future__ import annotations

import sys
import types


def install() -> None:
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - absent or broken: use the stand-in
        pass
    import numpy as np
    import torch
    from PIL import Image

    def to_pil_image(pic):
        return Image.fromarray(np.asarray(pic))

    def resize(img, size, interpolation=None, max_size=None, antialias=None):
        # torchvision on PIL images: size is (h, w); PIL takes (w, h); bilinear by default.
        return img.resize((size[1], size[0]), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def box_iou(a, b):
        lt = torch.max(a[:, None, :2], b[None, :, :2])
        rb = torch.min(a[:, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)

    def nms(boxes, scores, iou_threshold):
        order = torch.argsort(scores, descending=True)
        keep = []
        suppressed = torch.zeros(len(boxes), dtype=torch.bool)
        ious = box_iou(boxes, boxes)
        for i in order.tolist():
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= ious[i] > iou_threshold
        return torch.tensor(keep, dtype=torch.int64)

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = resize
    functional.to_pil_image = to_pil_image
    transforms.functional = functional
    ops = types.ModuleType("torchvision.ops")
    boxes_mod = types.ModuleType("torchvision.ops.boxes")
    boxes_mod.batched_nms = batched_nms
    boxes_mod.box_area = box_area
    ops.boxes = boxes_mod
    ops.batched_nms = batched_nms
    tv.transforms = transforms
    tv.ops = ops
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes_mod,
        }
    )
