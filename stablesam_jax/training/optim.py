"""The optimizer and learning-rate schedule of `config.optimizer`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import optax


def make_schedule(optimizer_config, epoch_steps: int) -> optax.Schedule:
    """Constant lr (the paper), optional drops at given epochs (HQ-SAM's 12-epoch run), optional
    linear warmup (pretraining)."""
    base = optimizer_config.learning_rate
    boundaries = {
        int(epoch * epoch_steps): optimizer_config.lr_drop_factor
        for epoch in optimizer_config.lr_drop_epochs
    }
    after_warmup = optax.piecewise_constant_schedule(base, boundaries)
    warmup_steps = optimizer_config.warmup_steps
    if warmup_steps <= 0:
        return after_warmup
    warmup = optax.linear_schedule(0.0, base, warmup_steps)
    # join_schedules restarts the count at each boundary; the drops count from step 0.
    return optax.join_schedules(
        [warmup, lambda step: after_warmup(step + warmup_steps)], [warmup_steps]
    )


# A weight whose dotted name holds this belongs to the DSP's offset network.
DSP_NAME_PART = ".dsp."
# DRP's learnable scale s (one scalar per DRP block).
DRP_SCALE_NAME_SUFFIX = ".drp.scale"


def _lr_multipliers(optimizer_config) -> dict[str, tuple[float, Callable[[str], bool]]]:
    """{tag: (multiplier, which weights)} for every lr multiplier other than 1."""
    o = optimizer_config
    groups = {
        "dsp_lr": (o.get("dsp_lr_multiplier", 1.0), lambda name: DSP_NAME_PART in name),
        "drp_scale_lr": (
            o.get("drp_scale_lr_multiplier", 1.0),
            lambda name: name.endswith(DRP_SCALE_NAME_SUFFIX),
        ),
    }
    return {tag: (float(m), which) for tag, (m, which) in groups.items() if float(m) != 1.0}


def make_optimizer(optimizer_config, schedule) -> optax.GradientTransformation:
    """Adam (AdamW with weight decay > 0), after global-norm clipping when grad_clip_norm > 0;
    with dsp_lr_multiplier != 1 the DSP's updates are scaled by it (Deformable DETR trains its
    sampling offsets at 0.1x the base lr), with drp_scale_lr_multiplier != 1 those of DRP's
    scale s (one scalar, which Adam moves by about lr per step: a short run barely moves it).
    Params are the trainer's {dotted name: array} dict."""
    o = optimizer_config
    if o.weight_decay > 0:
        tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    else:
        tx = optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    for multiplier, which in _lr_multipliers(o).values():
        # Adam's update is the lr times a gradient-scale-free step, so scaling the update is
        # training at multiplier x lr.
        mask = functools.partial(_name_mask, which)
        tx = optax.chain(tx, optax.masked(optax.scale(multiplier), mask))
    if o.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx


def _name_mask(which: Callable[[str], bool], params: dict) -> dict:
    return {name: which(name) for name in params}


def optimizer_kind(optimizer_config) -> str:
    """The optimizer state's structure in a word ("adam", "adamw+clip", ...): a checkpoint's
    optimizer state restores only into an optimizer of the same kind."""
    o = optimizer_config
    kind = ("adamw" if o.weight_decay > 0 else "adam") + ("+clip" if o.grad_clip_norm > 0 else "")
    return kind + "".join(f"+{tag}" for tag in _lr_multipliers(o))
