"""Named trainable subsets: which weights a recipe trains, as NNX filters.

- "plugins" (Stable-SAM): the DSP and DRP weights, i.e. every `PluginParam`.
- "decoder" (DT-SAM): the whole mask decoder.
- "prompt_tokens" (PT-SAM): the decoder's output tokens (IoU token and mask tokens) and the output
  MLP of the single-mask token used in training and evaluation (`output_hypernetworks_mlps.0`);
  141,088 weights against the paper's "0.13 M".
- "hq" (HQ-SAM): what the official HQ-SAM builder leaves trainable: the HQ token (`hf_token`),
  its MLP (`hf_mlp`) and the fusion convolutions (`compress_vit_feat`, `embedding_encoder`,
  `embedding_maskfeature`); empty on a model without the HQ decoder.
- "all" (SAM pretraining, the demo): every SAM weight, encoder included, never the plugins.

Everything outside the chosen subset is frozen: the trainer splits the model into (trainable,
frozen) state with `nnx.split(model, TRAINABLE_SUBSETS[name], ...)` and differentiates only with
respect to the first part, so no gradient (and no optimizer state) exists for the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from ..modeling.common import is_plugin_weight, is_sam_param
from ..modeling.mask_decoder_hq import is_hq_path


def decoder_filter(path, value) -> bool:
    return is_sam_param(path, value) and len(path) > 0 and path[0] == "mask_decoder"


_PROMPT_TOKEN_PREFIXES = (
    ("mask_decoder", "iou_token"),
    ("mask_decoder", "mask_tokens"),
    ("mask_decoder", "output_hypernetworks_mlps", 0),
)


def hq_filter(path, value) -> bool:
    return is_sam_param(path, value) and is_hq_path(path)


def prompt_tokens_filter(path, value) -> bool:
    return is_sam_param(path, value) and any(
        tuple(path[: len(p)]) == p for p in _PROMPT_TOKEN_PREFIXES
    )


TRAINABLE_SUBSETS: dict[str, Callable] = {
    "plugins": is_plugin_weight,
    "decoder": decoder_filter,
    "prompt_tokens": prompt_tokens_filter,
    "hq": hq_filter,
    "all": is_sam_param,
}


def subset_filter(name: str) -> Callable:
    """The filter of subset `name`; ValueError naming the choices for an unknown one."""
    if name not in TRAINABLE_SUBSETS:
        raise ValueError(
            f"unknown trainable subset {name!r}; choose from {sorted(TRAINABLE_SUBSETS)}"
        )
    return TRAINABLE_SUBSETS[name]
