"""Training: Stable-SAM's robust training strategy (RTS), the DT-SAM / PT-SAM baselines, and SAM
pretraining from scratch (for the demo), data-parallel over devices and hosts, resumable.

One step: SAM's image encoder runs forward only, outside the differentiated function (its weights
are frozen, so no activation is kept for a backward pass); the prompt encoder and mask decoder run
forward and backward with `encode_padded` + `mask_decoder(..., multimask_output=False,
token_valid=...)`, so every prompt kind (boxes, 1-10 points, coarse masks) batches with one fixed
shape; the loss is BCE + dice on the low-res logits (`losses.mask_loss`). Gradients and optimizer
state exist only for the trainable subset: the model is split with `nnx.split(model, filter, ...)`
and `jax.value_and_grad` sees the trainable part alone. With `trainable="all"` (pretraining) the
encoder runs inside the differentiated function instead.

Sharding: one mesh axis "data" over every device of every process; the batch is split along it and
all weights are replicated. Each process reads its own slice of the data
(`shard_index=process_index`) and `jax.make_array_from_process_local_data` assembles the global
batch. The train state is donated to the step, so it is updated in place.

A workdir holds: `checkpoints/` (Orbax CheckpointManager: trainable weights, optimizer state, step,
data-iterator state, RNG), `export/` (the trained weights in the form `build_stable_sam(...,
plugins=...)` / `build_sam(..., checkpoint=...)` read), `tensorboard/`, `train_metrics.jsonl` (one
line per step) and `config.json`. Starting on a workdir that has checkpoints resumes from the latest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ..modeling.common import PluginParam
from ..modeling.sam import SAM_VARIANTS, Sam, count_params
from . import losses
from .trainable import TRAINABLE_SUBSETS

logger = logging.getLogger("stablesam_jax.train")

METRICS_FILE = "train_metrics.jsonl"
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
DATA_SOURCES = ("hqseg44k", "folders", "scenes")

# Fields of a pipeline batch the step reads; the rest (occlusion) stays on the host.
DEVICE_FIELDS = (
    "image",
    "mask",
    "box",
    "box_valid",
    "point_coords",
    "point_labels",
    "mask_input",
    "mask_valid",
    "kind",
    "num_corrupt_skipped",
)


def all_params_filter(path, value) -> bool:
    """Every SAM weight (encoder included), never the plugins: pretraining SAM itself."""
    return isinstance(value, nnx.Param) and not isinstance(value, PluginParam)


SUBSETS: dict[str, Callable] = {**TRAINABLE_SUBSETS, "all": all_params_filter}


def subset_filter(name: str) -> Callable:
    if name not in SUBSETS:
        raise ValueError(f"unknown trainable subset {name!r}; choose from {sorted(SUBSETS)}")
    return SUBSETS[name]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; nothing after the last good step was saved."""


class ConfigError(ValueError):
    """A training config that cannot work; the message names the field to fix."""


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def default_config() -> ml_collections.ConfigDict:
    """Every field training reads, with the paper's recipe where the paper gives one.

    The config files in train/configs start from this and change what they need."""
    from ..data.folders import HQSEG44K_TRAIN
    from ..data.prompts import RTS_KINDS

    placeholder = ml_collections.config_dict.placeholder
    c = ml_collections.ConfigDict()

    # Model.
    c.model_type = "vit_l"  # vit_b / vit_l / vit_h, vit_t (tests), vit_demo (the demo)
    c.image_size = placeholder(int)  # optional check: must equal the model's input size
    c.with_plugins = (
        True  # build Stable-SAM (DSP + DRP); False = plain SAM (baselines, pretraining)
    )
    c.plugins = ml_collections.ConfigDict(
        dict(
            dsp_layers=(1,),
            offset_scale=4.0,
            sample="raw",
            use_drp=True,
            drp_hidden_dim=32,
            seed=0,  # plugin initialization, independent of model_seed (SAM's)
        )
    )
    c.trainable = (
        "plugins"  # plugins (Stable-SAM) / decoder (DT-SAM) / prompt_tokens (PT-SAM) / all
    )
    c.sam_checkpoint = placeholder(str)  # converted SAM Orbax dir; None = random init (model_seed)
    c.init_checkpoint = placeholder(str)  # any stablesam-jax checkpoint loaded over the model
    c.model_seed = 0
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (weights stay float32)
    c.attention_impl = "reference"  # encoder attention: reference / folded / folded_cudnn

    # Schedule.
    c.seed = 0  # data order, augmentation, prompts and loss point sampling
    c.batch_size = 32  # global, over all devices and hosts
    c.num_epochs = 1.0
    c.total_steps = placeholder(int)  # overrides num_epochs when set

    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-3,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,  # > 0 switches Adam to AdamW
            lr_drop_epochs=(),  # multiply the lr by lr_drop_factor at these epochs (HQ-SAM: 10)
            lr_drop_factor=0.1,
            warmup_steps=0,
            grad_clip_norm=0.0,  # 0 = no clipping (the paper clips nothing)
        )
    )
    c.loss = ml_collections.ConfigDict(
        dict(
            sampling="points",  # "points" (HQ-SAM) or "dense"
            num_points=12544,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            bce_weight=1.0,
            dice_weight=1.0,
            iou_weight=0.0,  # MSE of the IoU head vs the true IoU (pretraining; SAM's recipe)
        )
    )

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.source = "hqseg44k"  # hqseg44k / folders / scenes
    c.data.root = placeholder(str)  # hqseg44k: the folder holding DIS5K/, thin_object_detection/..
    c.data.datasets = tuple(HQSEG44K_TRAIN)
    c.data.image_dir = placeholder(str)  # folders: any image folder + mask folder, matched by stem
    c.data.mask_dir = placeholder(str)
    c.data.image_exts = (".jpg", ".jpeg")
    c.data.mask_exts = (".png",)
    c.data.allow_unmatched = False
    c.data.num_scenes = 2000  # scenes: generated on the fly (stablesam_jax.data.scenes)
    c.data.scene_seed = 0
    c.data.scene_size = 256
    c.data.max_objects = 4
    # RTS prompt mixture: relative weights of prompts.RTS_KINDS (paper: all kinds, no weights given;
    # ours: uniform).
    c.data.mixture = ml_collections.ConfigDict({kind: 1.0 for kind in RTS_KINDS})
    c.data.occlusion_prob = 0.5  # synthetic occlusion share (the paper gives none; ours)
    c.data.use_lsj = True
    c.data.lsj_range = (0.1, 2.0)
    c.data.flip_prob = 0.5
    c.data.skip_corrupt = False  # True: replace unreadable files and count them in the log
    c.data.num_workers = 0  # Grain worker processes (0 = threads in this process)
    c.data.read_threads = 2
    c.data.prefetch_batches = 2

    # Bookkeeping.
    c.log_every_steps = 10
    c.checkpoint_every_steps = 500  # also at the end; 0 = only at the end
    c.keep_checkpoints = 3
    c.resume = True  # an existing workdir resumes from its latest checkpoint
    c.export_on_save = True  # refresh WORKDIR/export at every checkpoint, not only at the end
    c.async_checkpointing = True

    c.distributed = ml_collections.ConfigDict(
        dict(
            coordinator_address=placeholder(str),  # "host:port"; None = auto-detect or single host
            num_processes=placeholder(int),
            process_id=placeholder(int),
        )
    )
    # Testing hook: poison the loss and gradients of this step (1-based, as logged; -1 = never).
    c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1))
    return c


def validate_config(config: ml_collections.ConfigDict) -> None:
    def fail(message):
        raise ConfigError(message)

    if config.model_type not in SAM_VARIANTS:
        fail(f"config.model_type={config.model_type!r}; choose from {sorted(SAM_VARIANTS)}")
    img_size = SAM_VARIANTS[config.model_type].img_size
    if config.image_size is not None and config.image_size != img_size:
        fail(
            f"config.image_size={config.image_size} but {config.model_type} takes {img_size} px "
            f"inputs: set image_size={img_size} (or leave it unset)"
        )
    subset_filter(config.trainable)
    if config.trainable == "plugins" and not config.with_plugins:
        fail("config.trainable='plugins' needs config.with_plugins=True")
    if config.dtype not in DTYPES:
        fail(f"config.dtype={config.dtype!r}; choose from {sorted(DTYPES)}")
    if config.batch_size < 1:
        fail(f"config.batch_size must be >= 1, got {config.batch_size}")
    if config.batch_size % jax.process_count():
        fail(
            f"config.batch_size={config.batch_size} must divide over {jax.process_count()} "
            "processes"
        )
    if config.batch_size % jax.device_count():
        fail(
            f"config.batch_size={config.batch_size} must be a multiple of the device count "
            f"({jax.device_count()}): the batch is split evenly over devices"
        )
    if config.loss.sampling not in losses.SAMPLING_MODES:
        fail(f"config.loss.sampling={config.loss.sampling!r}; choose from {losses.SAMPLING_MODES}")
    if config.data.source not in DATA_SOURCES:
        fail(f"config.data.source={config.data.source!r}; choose from {DATA_SOURCES}")
    if config.data.source == "hqseg44k" and not config.data.root:
        fail(
            "config.data.root is not set: point it at the folder holding HQSeg-44K (DIS5K/, "
            "thin_object_detection/, cascade_psp/), or use data.source='scenes'"
        )
    if config.data.source == "folders" and not (config.data.image_dir and config.data.mask_dir):
        fail("data.source='folders' needs config.data.image_dir and config.data.mask_dir")
    if config.total_steps is None and config.num_epochs <= 0:
        fail(f"config.num_epochs must be positive, got {config.num_epochs}")
    if config.total_steps is not None and config.total_steps < 1:
        fail(f"config.total_steps must be >= 1, got {config.total_steps}")


# ------------------------------------------------------------------------------------------------
# Model, data, optimizer
# ------------------------------------------------------------------------------------------------


def paper_config() -> ml_collections.ConfigDict:
    """The paper's recipe (Sec. 4) as run on an accelerator: SAM ViT-L, global batch 32, Adam lr
    1e-3 without weight decay, 1 epoch of HQSeg-44K, bf16 compute, fused attention, 8 input
    workers. Stable-SAM and its DT-SAM / PT-SAM baselines differ only in what they train."""
    config = default_config()
    config.model_type = "vit_l"
    config.trainable = "plugins"
    config.with_plugins = True
    config.batch_size = 32
    config.num_epochs = 1.0
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.data.source = "hqseg44k"
    config.data.num_workers = 8
    config.dtype = "bfloat16"  # compute only; weights, optimizer state and loss stay float32
    config.attention_impl = "folded_cudnn"
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    return config


def build_model(config: ml_collections.ConfigDict) -> Sam:
    """SAM or Stable-SAM as the config says, from `sam_checkpoint` or random (`model_seed`), then
    `init_checkpoint` loaded over it."""
    from .. import builder

    common = dict(
        dtype=DTYPES[config.dtype], attention_impl=config.attention_impl, seed=config.model_seed
    )
    if config.with_plugins:
        options = dict(config.plugins.to_dict())
        options["dsp_layers"] = tuple(options["dsp_layers"])
        options["plugin_seed"] = options.pop("seed", None)
        model = builder.build_stable_sam(
            config.model_type, config.sam_checkpoint, **common, **options
        )
    else:
        model = builder.build_sam(config.model_type, config.sam_checkpoint, **common)
    if config.init_checkpoint:
        load_into(model, config.init_checkpoint)
    return model


def load_into(model: Sam, directory: str) -> None:
    """Loads a "sam", "plugins" or "stable_sam" checkpoint's weights into `model`."""
    from .. import checkpoint as ckpt

    flat, meta = ckpt.load(directory)
    if meta.get("model_type") not in (None, model.model_type):
        raise ckpt.CheckpointError(
            f"{directory} holds {meta['model_type']} weights but the model is {model.model_type}"
        )
    kind = meta.get("kind")
    if kind == "plugins" or (kind == "stable_sam" and model.plugin_config is not None):
        if model.plugin_config is None:
            raise ckpt.CheckpointError(f"{directory} holds plugin weights: set with_plugins=True")
        plugin_names = ckpt.weight_names(model, ckpt.is_plugin_weight)
        ckpt.load_flat_weights(
            model,
            {k: v for k, v in flat.items() if k in plugin_names},
            ckpt.is_plugin_weight,
            directory,
        )
    if kind in ("sam", "stable_sam"):
        sam_names = ckpt.weight_names(model, ckpt.is_sam_weight)
        ckpt.load_flat_weights(
            model, {k: v for k, v in flat.items() if k in sam_names}, ckpt.is_sam_weight, directory
        )


def make_source(config: ml_collections.ConfigDict):
    """The record source (`pipeline.RecordSource`) the config names."""
    from ..data import folders, pipeline, scenes

    data = config.data
    if data.source == "scenes":
        return scenes.SceneDataset(
            data.num_scenes,
            seed=data.scene_seed,
            size=data.scene_size,
            max_objects=data.max_objects,
        )
    if data.source == "hqseg44k":
        return pipeline.pair_source(
            data.root, tuple(data.datasets), allow_unmatched=data.allow_unmatched
        )
    pairs = folders.folder_pairs(
        data.image_dir,
        data.mask_dir,
        image_exts=tuple(data.image_exts),
        mask_exts=tuple(data.mask_exts),
        allow_unmatched=data.allow_unmatched,
    )
    return pipeline.PairSource(pairs)


def make_dataset(config: ml_collections.ConfigDict, source):
    """This process's slice of the training stream (a Grain IterDataset of host-local batches)."""
    from ..data import pipeline

    data = config.data
    return pipeline.make_train_dataset(
        source,
        image_size=SAM_VARIANTS[config.model_type].img_size,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        mixture=dict(data.mixture.to_dict()),
        occlusion_prob=data.occlusion_prob,
        lsj_range=tuple(data.lsj_range) if data.use_lsj else None,
        num_workers=data.num_workers,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        skip_corrupt=data.skip_corrupt,
        flip_prob=data.flip_prob,
        read_threads=data.read_threads,
        prefetch_batches=data.prefetch_batches,
    )


def steps_per_epoch(config: ml_collections.ConfigDict, num_records: int) -> int:
    return max(1, num_records // config.batch_size)


def total_steps(config: ml_collections.ConfigDict, num_records: int) -> int:
    if config.total_steps is not None:
        return int(config.total_steps)
    return max(1, round(config.num_epochs * steps_per_epoch(config, num_records)))


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


def make_optimizer(optimizer_config, schedule) -> optax.GradientTransformation:
    o = optimizer_config
    if o.weight_decay > 0:
        tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    else:
        tx = optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
    if o.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ("data",) mesh over `devices` (default: every device of every process).

    Auto axis types: the sharding is given at the jit boundary and XLA propagates it, which keeps
    the models' per-example gathers (DSP sampling) legal without `jax.shard_map`."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def _path_name(key_path) -> str:
    parts = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
    return ".".join(parts)


def _replicate(tree, sharding: NamedSharding, *, copy: bool = True):
    """Places identical per-process values on every device of a (possibly multi-host) mesh.

    copy=False reuses arrays already placed that way; never for state the step donates, which
    would delete the caller's model arrays."""

    def put(x):
        if not copy and isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if jax.process_count() == 1:
            return jax.device_put(jnp.array(x, copy=True), sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def _local_copy(x):
    """A replicated global array's local replica, readable on any process."""
    return x.addressable_data(0) if isinstance(x, jax.Array) else x


# ------------------------------------------------------------------------------------------------
# The train step
# ------------------------------------------------------------------------------------------------


class Trainer:
    """The model split into (trainable, frozen) state, the optimizer, and the jitted sharded step.

    `state` = {"params": {dotted name: array} (the trainable subset), "opt_state", "step",
    "rng"}: a plain pytree that Orbax saves and restores as is."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: Sam | None = None,
        *,
        mesh: jax.sharding.Mesh | None = None,
        epoch_steps: int = 1,
    ):
        self.config = config
        self.model = build_model(config) if model is None else model
        self.mesh = make_mesh() if mesh is None else mesh
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P("data"))
        self.encoder_in_grad = config.trainable == "all"

        self.graphdef, trainable, frozen = nnx.split(
            self.model, subset_filter(config.trainable), ...
        )
        leaves, self._treedef = jax.tree_util.tree_flatten_with_path(trainable)
        self.names = [_path_name(path) for path, _ in leaves]
        if not self.names:
            raise ConfigError(
                f"trainable subset {config.trainable!r} selects no weight of this model"
            )
        self.num_trainable = int(sum(np.prod(leaf.shape) for _, leaf in leaves))
        self.num_total = count_params(self.model, nnx.Param)
        self.schedule = make_schedule(config.optimizer, epoch_steps)
        self.optimizer = make_optimizer(config.optimizer, self.schedule)

        params = {name: leaf for name, (_, leaf) in zip(self.names, leaves)}
        params = _replicate(params, self.replicated)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.replicated)(params)
        rng = jax.random.key_data(jax.random.key(config.seed))
        self.state = {
            "params": params,
            "opt_state": opt_state,
            "step": _replicate(np.int32(0), self.replicated),
            "rng": _replicate(np.asarray(rng), self.replicated),
        }
        self.frozen = _replicate(frozen, self.replicated, copy=False)
        self._step = jax.jit(
            self._make_step_fn(),
            in_shardings=(self.replicated, self.replicated, self.data_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )

    # -- pure functions ---------------------------------------------------------------------------

    def _state_of(self, params: dict):
        return jax.tree_util.tree_unflatten(self._treedef, [params[n] for n in self.names])

    def _make_step_fn(self):
        graphdef, loss_config = self.graphdef, self.config.loss
        encoder_in_grad = self.encoder_in_grad
        nan_at_step = int(self.config.debug.nan_at_step)
        schedule, optimizer = self.schedule, self.optimizer
        state_of = self._state_of

        def embed(model, images):
            return model.image_encoder(model.preprocess(images))

        def loss_fn(params, frozen, batch, embeddings, key):
            model = nnx.merge(graphdef, state_of(params), frozen)
            if embeddings is None:
                embeddings = embed(model, batch["image"])
            low_res, iou_pred, _ = model.decode_padded(
                embeddings,
                batch["point_coords"],
                batch["point_labels"],
                batch["box"],
                batch["box_valid"],
                batch["mask_input"],
                batch["mask_valid"],
                multimask_output=False,
            )
            logits = low_res[:, 0]
            target = losses.downsample_mask(batch["mask"], logits.shape[-1])
            loss, parts = losses.mask_loss(
                logits,
                target,
                key,
                sampling=loss_config.sampling,
                num_points=loss_config.num_points,
                oversample_ratio=loss_config.oversample_ratio,
                importance_sample_ratio=loss_config.importance_sample_ratio,
                bce_weight=loss_config.bce_weight,
                dice_weight=loss_config.dice_weight,
            )
            true_iou = jax.lax.stop_gradient(losses.mask_iou(logits, target))
            iou_mse = jnp.mean(jnp.square(iou_pred[:, 0] - true_iou))
            if loss_config.iou_weight:
                loss = loss + loss_config.iou_weight * iou_mse
            return loss, {**parts, "iou_mse": iou_mse, "train_iou": true_iou.mean()}

        def step_fn(state, frozen, batch):
            step = state["step"]
            key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
            embeddings = None
            if not encoder_in_grad:
                model = nnx.merge(graphdef, state_of(state["params"]), frozen)
                embeddings = jax.lax.stop_gradient(embed(model, batch["image"]))
            (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state["params"], frozen, batch, embeddings, key
            )
            if nan_at_step >= 0:
                poison = jnp.where(step + 1 == nan_at_step, jnp.nan, 1.0)
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
            new_state = {
                "params": params,
                "opt_state": opt_state,
                "step": step + 1,
                "rng": state["rng"],
            }
            return new_state, metrics

        return step_fn

    # -- host side --------------------------------------------------------------------------------

    def put_batch(self, local_batch: dict) -> dict:
        """This process's batch (numpy) -> the global batch, sharded along "data"."""
        fields = {name: np.asarray(local_batch[name]) for name in DEVICE_FIELDS}
        return jax.make_array_from_process_local_data(self.data_sharding, fields)

    def step(self, device_batch: dict) -> dict:
        """Runs one step in place (the old state is donated); returns the metrics (on device)."""
        self.state, metrics = self._step(self.state, self.frozen, device_batch)
        return metrics

    def abstract_state(self):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state
        )

    def trained_model(self) -> Sam:
        """The model with the current trainable weights (host-side merge, no copy of the frozen
        weights)."""
        params = {k: _local_copy(v) for k, v in self.state["params"].items()}
        frozen = jax.tree.map(_local_copy, self.frozen)
        return nnx.merge(self.graphdef, self._state_of(params), frozen)


# ------------------------------------------------------------------------------------------------
# Distributed setup, checkpoints, export
# ------------------------------------------------------------------------------------------------


def initialize_distributed(
    config: ml_collections.ConfigDict | None = None, *, auto_detect: bool = False
) -> None:
    """`jax.distributed.initialize` for multi-process jobs; a no-op for a single process.

    Explicit `config.distributed` values win. With `auto_detect` (the command line), JAX's cluster
    detection (SLURM, Open MPI, Kubernetes, TPU pods) is tried and a plain single host (no
    coordinator found) carries on alone. Must run before any other JAX computation."""
    if jax.distributed.is_initialized():
        return
    dist = None if config is None else config.distributed
    if dist is not None and dist.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
        )
    elif auto_detect:
        try:
            jax.distributed.initialize()
        except ValueError:
            pass  # no coordinator: a single-process run


def _checkpoint_manager(directory: str, config):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints,
        create=True,
        enable_async_checkpointing=config.async_checkpointing,
    )
    return ocp.CheckpointManager(directory, options=options)


def _run_identity(config) -> dict:
    # What a resumed run must share with the run that wrote the checkpoint.
    return {
        "model_type": config.model_type,
        "trainable": config.trainable,
        "with_plugins": config.with_plugins,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "process_count": jax.process_count(),
        # The optimizer state's structure: a checkpoint restores only into the same one.
        "optimizer": ("adamw" if config.optimizer.weight_decay > 0 else "adam")
        + ("+clip" if config.optimizer.grad_clip_norm > 0 else ""),
    }


def export_kind(config) -> str:
    """ "plugins" (a plugin checkpoint) for the plugins subset, else "sam" (a full SAM)."""
    return "plugins" if config.trainable == "plugins" else "sam"


def export(trainer: Trainer, directory: str) -> str:
    """Writes the trained weights where `build_stable_sam(plugins=...)` / `build_sam(checkpoint=...)`
    read them, replacing an earlier export: written next to it, then swapped in by renames, so a
    crash never leaves a half-written export under the final name."""
    from .. import builder

    directory = os.path.abspath(directory)
    staging = directory + ".new"
    previous = directory + ".old"
    if jax.process_index() == 0:
        for path in (staging, previous):
            shutil.rmtree(path, ignore_errors=True)
    _sync("export-start")
    model = trainer.trained_model()
    if export_kind(trainer.config) == "plugins":
        builder.save_plugins(model, staging)
    else:
        builder.save_merged(model, staging)
    _sync("export-written")
    if jax.process_index() == 0:
        if os.path.exists(directory):
            os.rename(directory, previous)
        os.rename(staging, directory)
        shutil.rmtree(previous, ignore_errors=True)
    _sync("export-done")
    return directory


def _on_process_zero(predicate: Callable[[], bool]) -> bool:
    """Process 0's answer, on every process (hosts may not share a filesystem view)."""
    answer = bool(predicate())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        answer = bool(multihost_utils.broadcast_one_to_all(np.int32(answer)))
    return answer


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash: everything after it is unreliable
    return rows


def _truncate_metrics(path: str, last_step: int) -> None:
    """Keeps the per-step records up to the restored step; later ones are recomputed."""
    rows = [row for row in _read_jsonl(path) if row["step"] <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


@dataclasses.dataclass
class _Throughput:
    images: int = 0
    seconds: float = 0.0
    input_seconds: float = 0.0

    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _non_finite_message(step: int, metrics: dict, last_saved: int | None, ckpt_dir: str) -> str:
    saved = (
        f"The last good checkpoint is step {last_saved} in {ckpt_dir}; restarting on this workdir "
        "resumes from it."
        if last_saved is not None
        else "No checkpoint was written yet."
    )
    return (
        f"non-finite training loss at step {step} (loss={metrics['loss']}, "
        f"grad_norm={metrics['grad_norm']}); stopping without saving the bad state. {saved} "
        "What to try: a lower learning rate (config.optimizer.learning_rate), gradient clipping "
        "(config.optimizer.grad_clip_norm), float32 compute (config.dtype='float32'), and check the "
        "data for empty or broken masks."
    )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains as `config` says in `workdir`, resuming from its latest checkpoint if there is one.

    Returns {"step": last step, "metrics": last step's metrics, "export": path of the exported
    weights, "export_kind": "plugins" or "sam", "checkpoint_dir", "images_per_second",
    "input_wait_fraction", "resumed_from": step or None, "model": the trained model}.
    Raises NonFiniteLossError on a NaN/inf loss (the last good checkpoint stays).
    """
    import grain
    import orbax.checkpoint as ocp

    from .metric_writer import make_metric_writer

    config = ml_collections.ConfigDict(config.to_dict())  # a private, unlocked copy
    initialize_distributed(config)
    validate_config(config)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)
    _sync("workdir")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    metrics_path = os.path.join(workdir, METRICS_FILE)
    export_dir = os.path.join(workdir, "export", export_kind(config))

    source = make_source(config)
    epoch_steps = steps_per_epoch(config, len(source))
    num_steps = total_steps(config, len(source))
    iterator = iter(make_dataset(config, source))

    # Everything that can fail fast (a changed recipe, unreadable data) does so before the model
    # is built and compiled.
    manager = _checkpoint_manager(ckpt_dir, config)
    identity = _run_identity(config)
    resumed_from = manager.latest_step()
    if resumed_from is not None:
        if not config.resume:
            raise ConfigError(
                f"{workdir} already holds checkpoints (latest step {resumed_from}) and "
                "config.resume=False: use a new workdir, or resume"
            )
        stored = manager.restore(resumed_from, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        stored_identity = stored["meta"]["identity"]
        changed = {
            k: (stored_identity.get(k), v)
            for k, v in identity.items()
            if stored_identity.get(k) != v
        }
        if changed:
            raise ConfigError(
                f"{workdir} holds a run with different settings {changed} (stored, now): "
                "use a new workdir, or restore those settings to resume"
            )
        manager.restore(
            resumed_from,
            args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator)),
        )
    start_step = resumed_from or 0
    # Reading the first batch now surfaces a broken data root before the model is built, and
    # lets the input threads work while it is.
    first_batch = next(iterator) if start_step < num_steps else None

    trainer = Trainer(config, epoch_steps=epoch_steps)
    if resumed_from is not None:
        restored = manager.restore(
            resumed_from,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state())),
        )
        trainer.state = restored["state"]
        restored_step = int(_local_copy(trainer.state["step"]))
        if restored_step != resumed_from:
            raise ValueError(f"checkpoint {resumed_from} holds step {restored_step}")
        if is_main:
            _truncate_metrics(metrics_path, resumed_from)

    writer = make_metric_writer(os.path.join(workdir, "tensorboard"), enabled=is_main)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))
        logger.info("config:\n%s", config)
        logger.info("versions: %s", json.dumps(_versions()))
        logger.info(
            "devices: %d (%s) over %d process(es); global batch %d, %d per device",
            jax.device_count(),
            jax.devices()[0].device_kind,
            jax.process_count(),
            config.batch_size,
            config.batch_size // jax.device_count(),
        )
        logger.info(
            "parameters: %s total, %s trainable (%s), %s frozen",
            f"{trainer.num_total:,}",
            f"{trainer.num_trainable:,}",
            config.trainable,
            f"{trainer.num_total - trainer.num_trainable:,}",
        )
        logger.info(
            "data: %d records, %d steps per epoch, %d steps; %s",
            len(source),
            epoch_steps,
            num_steps,
            f"resuming from step {start_step}" if resumed_from is not None else "fresh start",
        )
        writer.write_hparams(
            {
                k: v if isinstance(v, bool | int | float | str) else str(v)
                for k, v in _flatten(config.to_dict()).items()
            }
        )

    metrics_file = open(metrics_path, "a") if is_main else None  # noqa: SIM115
    last_saved = resumed_from
    last_metrics: dict = {}
    throughput = _Throughput()
    window = _Throughput()
    pending: tuple[int, dict, float, float] | None = None  # metrics of the step in flight

    def record(step: int, device_metrics: dict, step_seconds: float, input_seconds: float):
        """Fetches one step's metrics, stops on a non-finite value, logs."""
        nonlocal last_metrics
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            message = _non_finite_message(step, values, last_saved, ckpt_dir)
            manager.wait_until_finished()  # earlier (good) saves complete; nothing new is saved
            logger.error(message)
            raise NonFiniteLossError(message)
        last_metrics = values
        if metrics_file is not None:
            metrics_file.write(json.dumps({"step": step, **values}) + "\n")
            metrics_file.flush()
        if step > start_step + 1:  # the first step includes compilation
            for t in (throughput, window):
                t.images += config.batch_size
                t.seconds += step_seconds
                t.input_seconds += input_seconds
        if is_main and (step % config.log_every_steps == 0 or step == num_steps):
            rate = window.rate() if window.seconds > 0 else throughput.rate()
            eta = (num_steps - step) * config.batch_size / rate if rate > 0 else float("nan")
            wait = window.input_seconds / window.seconds if window.seconds > 0 else float("nan")
            logger.info(
                "step %d/%d  loss %.4f (bce %.4f, dice %.4f)  iou %.3f  grad %.3g  "
                "%.2f img/s  input wait %.0f%%  ETA %s%s",
                step,
                num_steps,
                values["loss"],
                values["bce"],
                values["dice"],
                values["train_iou"],
                values["grad_norm"],
                rate,
                100 * wait,
                _format_seconds(eta),
                f"  corrupt skipped {int(values['num_corrupt_skipped'])}"
                if values["num_corrupt_skipped"]
                else "",
            )
            writer.write_scalars(
                step, {**values, "images_per_second": rate, "input_wait_fraction": wait}
            )
            window.images, window.seconds, window.input_seconds = 0, 0.0, 0.0

    def save(step: int) -> None:
        nonlocal last_saved
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(trainer.state),
                data=grain.checkpoint.CheckpointSave(iterator),
                meta=ocp.args.JsonSave({"identity": identity, "config": config.to_dict()}),
            ),
            force=True,
        )
        last_saved = step
        if config.export_on_save or step == num_steps:
            export(trainer, export_dir)

    tick = time.perf_counter()
    try:
        for step in range(start_step + 1, num_steps + 1):
            input_start = time.perf_counter()
            if first_batch is not None:
                host_batch, first_batch = first_batch, None
            else:
                host_batch = next(iterator)
            batch = trainer.put_batch(host_batch)
            input_seconds = time.perf_counter() - input_start
            metrics = trainer.step(batch)
            if pending is not None:
                record(*pending)
            now = time.perf_counter()
            # Step time is measured between dispatches, so it includes input, compute and logging.
            pending = (step, metrics, now - tick, input_seconds)
            tick = now
            save_now = step == num_steps or (
                config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0
            )
            if save_now:
                record(*pending)
                pending = None
                save(step)
        if pending is not None:
            record(*pending)
        if _on_process_zero(lambda: not os.path.exists(export_dir)):
            export(trainer, export_dir)  # a finished run restarted after its export was removed
        manager.wait_until_finished()
    finally:
        manager.close()
        if metrics_file is not None:
            metrics_file.close()
        writer.close()
    if is_main:
        logger.info(
            "done: step %d, loss %s, %.2f img/s, export %s",
            num_steps,
            last_metrics.get("loss"),
            throughput.rate(),
            export_dir,
        )
    return {
        "step": num_steps,
        "metrics": last_metrics,
        "export": export_dir,
        "export_kind": export_kind(config),
        "checkpoint_dir": ckpt_dir,
        "images_per_second": throughput.rate(),
        "input_wait_fraction": (
            throughput.input_seconds / throughput.seconds if throughput.seconds else float("nan")
        ),
        "resumed_from": resumed_from,
        "model": trainer.trained_model(),
    }


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def iterate_batches(config, source=None) -> Iterator[dict]:
    """This process's host batches for `config` (benchmarks and debugging)."""
    source = make_source(config) if source is None else source
    return iter(make_dataset(config, source))


def configure_logging() -> None:
    """Progress lines to stdout (absl keeps its own handler on stderr when it runs the CLI)."""
    if not any(getattr(h, "_stablesam", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._stablesam = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
