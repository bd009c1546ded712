"""Where a sloppy prompt's mask goes wrong in SAM's decoder: in what the output tokens read from
the image, or in the image tokens the mask is read from.

Stable-SAM's plugins act on one thing only: what the tokens read in a block's token-to-image
attention (the DSP moves where, DRP weighs how much). That can mend a sloppy prompt's mask only
if the mask depends on that read. This measurement asks the SAM directly, with no plugin and no
training. Per image, SAM decodes the ground-truth box (the good prompt); then every other prompt
type decodes again with one part of the decoder replaced by the GT-box run's (`READ_SWAP_ROWS`):
- "sam": nothing replaced (the evaluation's SAM);
- "gt_box_read": the output tokens' read in block `layer` (the plugins' block): the read a
  perfect plugin would give if "perfect" means "what the good prompt reads";
- "no_read": that read set to zero (how much the mask depends on the read at all);
- "gt_box_image": the image tokens after the two-way transformer, which the mask is read from
  (the image side: what the image-to-token attention wrote into the map from the prompt).
If "gt_box_read" leaves a prompt type's mIoU where "sam" has it while "gt_box_image" lifts it,
the failure lives in the image tokens, beyond what any read in that attention can change.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ..modeling.plugins import FixedImageTokens, FixedTokenRead
from ..modeling.sam import Sam
from ..predictor import SamPredictor
from ..utils.progress import Progress
from .metrics import mask_iou_batch
from .oracle import prompt_masks
from .sources import load_with_prompts

READ_SWAP_ROWS = ("sam", "gt_box_read", "no_read", "gt_box_image")
REFERENCE_TYPE = "gt_box"


def _reference_parts(predictor: SamPredictor, prompt: dict, layer: int) -> tuple:
    """The GT-box run's output-token read in block `layer` [n, C] and image tokens [H, W, C]."""
    *_, intermediates = predictor.predict(
        point_coords=prompt["point_coords"],
        point_labels=prompt["point_labels"],
        box=prompt["box"],
        multimask_output=False,
        return_intermediates=True,
    )
    outputs = predictor.model.mask_decoder.num_output_tokens
    read = intermediates[f"layer{layer}/token_to_image_out"][:outputs]
    return read, intermediates["image_tokens"]


def _replace(predictor: SamPredictor, layer: int, read=None, image=None) -> None:
    """From the next call the predictor's model uses `read` [n, C] as block `layer`'s output-token
    read and `image` [H, W, C] as its image tokens (None: computed, as SAM does)."""
    decoder = predictor.model.mask_decoder
    block = decoder.transformer.layers[layer]
    block.fixed_read = None if read is None else FixedTokenRead(jnp.asarray(read))
    decoder.fixed_image_tokens = None if image is None else FixedImageTokens(jnp.asarray(image))
    predictor.update_weights()


def read_swap_report(
    model: Sam,
    source,
    prompt_types: Sequence[str],
    num_prompts: int,
    seed: int = 0,
    *,
    layer: int = 1,
    progress: bool = True,
) -> dict:
    """{row: {prompt type: mIoU (0-100)}} (rows: `READ_SWAP_ROWS`) of SAM `model` on `source`
    (a `SampleSource`) with the evaluator's prompts (`load_with_prompts`, same seed: the "sam"
    row is the evaluation's). The GT box itself is the reference: it is scored in the "sam" row
    only. The model is left as it came."""
    if REFERENCE_TYPE not in prompt_types:
        raise ValueError(f"the read swap needs {REFERENCE_TYPE!r} among the prompt types")
    if not 0 <= layer < len(model.mask_decoder.transformer.layers):
        raise ValueError(f"layer {layer} is not a two-way block of this model")
    swapped = [t for t in prompt_types if t != REFERENCE_TYPE]
    predictor = SamPredictor(model)
    ious: dict = {row: {t: [] for t in prompt_types} for row in READ_SWAP_ROWS}
    status = Progress(len(source), "read swap", enabled=progress)
    try:
        for index in range(len(source)):
            sample, prompts = load_with_prompts(source, index, prompt_types, num_prompts, seed)
            if prompts is None:
                continue
            predictor.set_image(sample.image)
            _replace(predictor, layer)
            read, image = _reference_parts(predictor, prompts[REFERENCE_TYPE][0], layer)
            replacements = {
                "sam": {},
                "gt_box_read": {"read": read},
                "no_read": {"read": np.zeros_like(read)},
                "gt_box_image": {"image": image},
            }
            for row, parts in replacements.items():
                _replace(predictor, layer, **parts)
                for prompt_type in prompt_types if row == "sam" else swapped:
                    masks = prompt_masks(predictor, prompts[prompt_type])
                    ious[row][prompt_type].append(float(mask_iou_batch(masks, sample.mask).mean()))
            status.update(index + 1)
    finally:
        _replace(predictor, layer)
    return {
        row: {t: 100.0 * float(np.mean(v)) for t, v in cells.items() if v}
        for row, cells in ious.items()
    }


def format_read_swap_table(report: dict, prompt_types: Sequence[str]) -> str:
    """The report as a Markdown table: one row per replacement, mIoU per prompt type."""
    header = "| replaced from the GT-box run | " + " | ".join(prompt_types) + " |"
    lines = [header, "|---" * (len(prompt_types) + 1) + "|"]
    for row, cells in report.items():
        scores = [f"{cells[t]:.1f}" if t in cells else "-" for t in prompt_types]
        lines.append(f"| {row} | " + " | ".join(scores) + " |")
    return "\n".join(lines) + "\n"
