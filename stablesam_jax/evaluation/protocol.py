"""The evaluation protocol: SAM variants under prompts of varying quality (paper Tables 2-3).

For every image, every prompt type and every model, `num_prompts` prompts are drawn with
`prompts.eval_prompts(mask, type, num, image_seed(name, seed))` (so each model sees exactly the
same prompts), decoded in one batched call on the image's embedding with the single-mask output
(`multimask_output=False`), and the low-res (256x256) logits are upsampled to the original image
size (`Sam.postprocess_masks`) and thresholded at 0. Per image: mIoU and mBIoU are the means over
the prompts of `metrics.mask_iou` / `metrics.boundary_iou`, mSF is `metrics.stability_score` of
the prompts' masks. Per dataset: the mean over its images; pooled: the mean over all images of
all datasets. All reported values are 0-100. Models with the dynamic routing plugin also report
the mean routing weights a1 and a2 (`layer1/drp_alpha[:, 0]`, `[:, 1]`) per prompt type. JAX models also report
the DSP block's attention on the target and, with plugins, offset statistics (`diagnostics`). See
docs/design.md, Evaluation protocol and Diagnostics.

This module holds the protocol's names and the checks every entry point shares.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.prompts import NUM_POINTS, PROMPT_TYPES

RESULTS_SCHEMA_VERSION = 1

# The demo's four types; the paper's Table 2 shows noisy_box, one_point and three_points.
DEFAULT_PROMPT_TYPES = ("gt_box", "noisy_box", "one_point", "three_points")
PAPER_TABLE2_PROMPT_TYPES = ("noisy_box", "one_point", "three_points")
COCO_IOU_BINS = ((0.5, 0.6), (0.6, 0.7))
METRIC_KEYS = ("miou", "mbiou", "msf")
POOLED = "pooled"

PROMPT_TYPE_TITLES = {
    "gt_box": "GT Box",
    "noisy_box": "Noisy Box",
    "noisy_box_50_60": "N-Box 0.5-0.6",
    "noisy_box_60_70": "N-Box 0.6-0.7",
    "one_point": "1 Point",
    "three_points": "3 Points",
    "five_points": "5 Points",
    "ten_points": "10 Points",
}


def max_points_for(prompt_types: Sequence[str]) -> int:
    """Point slots a decoder needs for every prompt of these types (at least 1)."""
    return max([NUM_POINTS.get(t, 1) for t in prompt_types] + [1])


def check_name(name: str, what: str) -> None:
    # POOLED is the report's key for the mean over all datasets: no model or dataset may take it.
    if not isinstance(name, str) or not name or name == POOLED:
        raise ValueError(f"{what} name must be a non-empty string other than {POOLED!r}: {name!r}")


def check_protocol(prompt_types: Sequence[str], num_prompts: int) -> tuple[str, ...]:
    """The prompt types as a tuple; raises on unknown types or a non-positive prompt count."""
    prompt_types = tuple(prompt_types)
    unknown = [t for t in prompt_types if t not in PROMPT_TYPES]
    if unknown or not prompt_types:
        raise ValueError(f"unknown prompt types {unknown}; choose from {PROMPT_TYPES}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    return prompt_types
