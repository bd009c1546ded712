"""The train step as pure functions: `loss_fn` and `train_step`.

One step: SAM's image encoder runs forward only, outside the differentiated function (its weights
are frozen, so no activation is kept for a backward pass); the prompt encoder and mask decoder run
forward and backward through `Sam.decode_padded(..., multimask_output=False)`, so every prompt kind
(boxes, 1-10 points, coarse masks) batches with one fixed shape; the loss is BCE + dice on the
low-res logits (`losses.mask_loss`), plus an optional IoU-head MSE. With `encoder_in_grad`
(trainable="all", pretraining) the encoder runs inside the differentiated function instead.

Gradients and optimizer state exist only for the trainable subset: `split_model` cuts the model
into a static `ModelDef`, the trainable weights as a flat `{dotted name: array}` dict (the form
Orbax saves and the optimizer state mirrors) and the frozen state; `jax.value_and_grad` sees the
trainable dict alone.

Nothing here is jitted: the Trainer compiles `train_step` with its shardings, `model`,
`optimizer`, `schedule` and `settings` being static arguments (all hashable; positional, since
`jax.jit` takes no keyword arguments along with `in_shardings`), and a test may compile it
without any.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from ..checkpoint import path_name
from ..modeling.sam import Sam
from . import losses

# train_step's static arguments (model, optimizer, schedule, settings).
STATIC_ARGNUMS = (0, 4, 5, 6)


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of a split model: how the trainable dict and the frozen state merge back
    into a `Sam`. Hashable, so it can be a static jit argument."""

    graphdef: nnx.GraphDef
    treedef: Any  # of the trainable nnx.State; its leaves in the order of `names`
    names: tuple[str, ...]  # dotted names (`checkpoint.path_name`) of the trainable weights

    # jit hashes its static arguments at every call, and hashing a GraphDef walks the whole
    # model graph (milliseconds for vit_h): computed once per ModelDef instead.
    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.graphdef, self.treedef, self.names))

    def __hash__(self) -> int:
        return self._hash

    def trainable_state(self, params: dict) -> nnx.State:
        return jax.tree_util.tree_unflatten(self.treedef, [params[n] for n in self.names])

    def merge(self, params: dict, frozen) -> Sam:
        return nnx.merge(self.graphdef, self.trainable_state(params), frozen)


def _dotted_name(key_path) -> str:
    # A State leaf's key path holds the model path as dict keys (list indices included), then the
    # Variable's own `value` attribute, which is no part of the name.
    path = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            path.append(key.key)
        elif isinstance(key, jax.tree_util.SequenceKey):
            path.append(key.idx)
    return path_name(path)


def split_model(model: Sam, trainable_filter) -> tuple[ModelDef, dict, nnx.State]:
    """(static ModelDef, {dotted name: array} of the weights `trainable_filter` selects, the rest
    of the model's state)."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter, ...)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(trainable)
    names = tuple(_dotted_name(key_path) for key_path, _ in leaves)
    params = {name: leaf for name, (_, leaf) in zip(names, leaves, strict=True)}
    return ModelDef(graphdef, treedef, names), params, frozen


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """`config.loss` as a hashable value (see `losses.mask_loss` for the sampling fields)."""

    sampling: str = "points"
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    iou_weight: float = 0.0  # MSE of the IoU head vs the true IoU; 0 = reported, not trained


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Everything of the config the step itself reads, as a hashable value."""

    loss: LossSettings = LossSettings()
    encoder_in_grad: bool = False  # differentiate through the image encoder (trainable="all")
    hq_token_only: bool = False  # HQ-SAM: the loss on the HQ mask alone
    nan_at_step: int = -1  # testing hook: poison this step's loss and gradients (1-based)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> StepSettings:
        return cls(
            loss=LossSettings(**config.loss.to_dict()),
            encoder_in_grad=config.trainable == "all",
            hq_token_only=bool(config.get("hq_token_only", False)),
            nan_at_step=int(config.debug.nan_at_step),
        )


def encode(model: Sam, images: jax.Array) -> jax.Array:
    """Image embeddings of a batch of padded uint8/float images."""
    return model.image_encoder(model.preprocess(images))


def loss_fn(
    params: dict,
    frozen: nnx.State,
    batch: dict,
    embeddings: jax.Array | None,
    key: jax.Array,
    *,
    model: ModelDef,
    settings: LossSettings,
    hq_token_only: bool = False,
) -> tuple[jax.Array, dict]:
    """(loss, {"bce", "dice", "iou_mse", "train_iou"[, "drp_a1", "drp_a1_std", "drp_a2"]}) of one
    batch; differentiable in `params`.

    embeddings: the frozen encoder's output, or None to run the encoder here (inside the gradient).
    key: the loss's point-sampling key (unused with sampling="dense"). hq_token_only: HQ-SAM's
    HQ mask alone is trained (the IoU head stays SAM's)."""
    sam = model.merge(params, frozen)
    if embeddings is None:
        embeddings = encode(sam, batch["image"])
    low_res, iou_pred, intermediates = sam.decode_padded(
        embeddings,
        batch["point_coords"],
        batch["point_labels"],
        batch["box"],
        batch["box_valid"],
        batch["mask_input"],
        batch["mask_valid"],
        multimask_output=False,
        hq_token_only=hq_token_only,
    )
    logits = low_res[:, 0]
    target = losses.downsample_mask(batch["mask"], logits.shape[-1])
    loss, parts = losses.mask_loss(
        logits,
        target,
        key,
        sampling=settings.sampling,
        num_points=settings.num_points,
        oversample_ratio=settings.oversample_ratio,
        importance_sample_ratio=settings.importance_sample_ratio,
        bce_weight=settings.bce_weight,
        dice_weight=settings.dice_weight,
    )
    true_iou = jax.lax.stop_gradient(losses.mask_iou(logits, target))
    iou_mse = jnp.mean(jnp.square(iou_pred[:, 0] - true_iou))
    if settings.iou_weight:
        loss = loss + settings.iou_weight * iou_mse
    return loss, {
        **parts,
        "iou_mse": iou_mse,
        "train_iou": true_iou.mean(),
        **routing_metrics(intermediates),
    }


def routing_metrics(intermediates: dict) -> dict:
    """DRP's weight on the deformed features, a1, of the first DSP block that has a DRP: its batch
    mean and spread (the paper's claim is that a1 depends on the prompt), and the mean of a2, the
    weight on SAM's own features (with sigmoid routing a1 + a2 is not fixed); {} without a DRP.
    Logged every step because the routing can collapse within a few dozen steps."""
    names = sorted(name for name in intermediates if name.endswith("/drp_alpha"))
    if not names:
        return {}
    alpha = jax.lax.stop_gradient(intermediates[names[0]])  # [B, 2]
    a1 = alpha[:, 0]
    return {"drp_a1": a1.mean(), "drp_a1_std": a1.std(), "drp_a2": alpha[:, 1].mean()}


def train_step(
    model: ModelDef,
    state: dict,
    frozen: nnx.State,
    batch: dict,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    settings: StepSettings,
) -> tuple[dict, dict]:
    """One optimizer step: (new state, metrics). Compile with `static_argnums=STATIC_ARGNUMS`
    (model, optimizer, schedule, settings); `state` may be donated.

    state: {"params": trainable dict, "opt_state": optimizer state, "step": int32 count of steps
    done, "rng": key data of the run's base key}; the returned state has step + 1 and the same rng.
    The loss key of a step is `fold_in(rng, step)`: a function of the step alone, so a resumed run
    draws the same points as an uninterrupted one."""
    step = state["step"]
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    embeddings = None
    if not settings.encoder_in_grad:
        sam = model.merge(state["params"], frozen)
        embeddings = jax.lax.stop_gradient(encode(sam, batch["image"]))
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"],
        frozen,
        batch,
        embeddings,
        key,
        model=model,
        settings=settings.loss,
        hq_token_only=settings.hq_token_only,
    )
    if settings.nan_at_step >= 0:
        poison = jnp.where(step + 1 == settings.nan_at_step, jnp.nan, 1.0)
        loss = loss * poison
        grads = jax.tree.map(lambda g: g * poison, grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "loss": loss,
        **parts,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(step),
        "num_corrupt_skipped": batch["num_corrupt_skipped"].sum(),
    }
    new_state = {"params": params, "opt_state": opt_state, "step": step + 1, "rng": state["rng"]}
    return new_state, metrics
