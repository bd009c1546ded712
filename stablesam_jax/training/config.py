"""Training configs: every field the trainer reads (`default_config`), the paper's recipe
(`paper_config`) and the checks run before anything is built (`validate_config`).

The config files in train/configs start from one of these and change what they need; any field
can also be overridden on the command line (`--config.batch_size=8`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections

from ..data.folders import HQSEG44K_TRAIN
from ..data.prompts import RTS_KINDS
from ..data.scenes import SCENE_FAMILIES
from ..modeling.plugins import PluginConfig
from ..modeling.sam import SAM_VARIANTS
from . import losses
from .trainable import subset_filter

# config.dtype -> the models' compute dtype (None = float32, the parity setting).
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
DATA_SOURCES = ("hqseg44k", "folders", "scenes")

_placeholder = ml_collections.config_dict.placeholder


class ConfigError(ValueError):
    """A training config that cannot work; the message names the field to fix."""


def default_config() -> ml_collections.ConfigDict:
    """Every field training reads, with the paper's recipe where the paper gives one."""
    c = ml_collections.ConfigDict()
    _add_model_fields(c)
    _add_schedule_fields(c)
    _add_data_fields(c)
    _add_bookkeeping_fields(c)
    return c


def _add_model_fields(c: ml_collections.ConfigDict) -> None:
    c.model_type = "vit_l"  # vit_b / vit_l / vit_h, vit_t (tests), vit_demo (the demo)
    c.image_size = _placeholder(int)  # optional check: must equal the model's input size
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
            center_offsets=False,  # True: no global translation (PluginConfig.center_offsets)
            padding="zeros",  # off-map samples: "zeros" or "border" (PluginConfig.padding)
            routing="softmax",  # DRP's sigma: "softmax" or "sigmoid" (PluginConfig.routing)
        )
    )
    c.trainable = (
        "plugins"  # plugins (Stable-SAM) / decoder (DT-SAM) / prompt_tokens (PT-SAM) / all
    )
    c.sam_checkpoint = _placeholder(str)  # converted SAM Orbax dir; None = random init (model_seed)
    c.init_checkpoint = _placeholder(str)  # any stablesam-jax checkpoint loaded over the model
    # HQ-SAM from SAM: sam_checkpoint holds the base SAM (vit_l for hq_vit_l); HQ parts random.
    c.hq_from_sam = False
    # The loss on HQ-SAM's HQ mask alone, as HQ-SAM trains (False: SAM's mask + the HQ mask).
    c.hq_token_only = False
    c.model_seed = 0
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (weights stay float32)
    c.attention_impl = "reference"  # encoder attention: modeling.image_encoder.ATTENTION_IMPLS


def _add_schedule_fields(c: ml_collections.ConfigDict) -> None:
    c.seed = 0  # data order, augmentation, prompts and loss point sampling
    c.batch_size = 32  # global, over all devices and hosts
    c.num_epochs = 1.0
    c.total_steps = _placeholder(int)  # overrides num_epochs when set

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
            dsp_lr_multiplier=1.0,  # the DSP's lr = this x learning_rate (Deformable DETR: 0.1)
            drp_scale_lr_multiplier=1.0,  # DRP's scale s: lr = this x learning_rate
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


def _add_data_fields(c: ml_collections.ConfigDict) -> None:
    c.data = ml_collections.ConfigDict()
    c.data.source = "hqseg44k"  # hqseg44k / folders / scenes
    c.data.root = _placeholder(str)  # hqseg44k: the folder holding DIS5K/, thin_object_detection/..
    c.data.datasets = tuple(HQSEG44K_TRAIN)
    c.data.image_dir = _placeholder(str)  # folders: any image folder + mask folder, matched by stem
    c.data.mask_dir = _placeholder(str)
    c.data.image_exts = (".jpg", ".jpeg")
    c.data.mask_exts = (".png",)
    c.data.allow_unmatched = False
    c.data.num_scenes = 2000  # scenes: generated on the fly (stablesam_jax.data.scenes)
    c.data.scene_seed = 0
    c.data.scene_size = 256
    c.data.max_objects = 4
    c.data.scene_family = "shapes"  # shapes / clusters (stablesam_jax.data.scenes.SCENE_FAMILIES)
    # RTS prompt mixture: relative weights of prompts.RTS_KINDS (paper: all kinds, no weights given;
    # ours: uniform).
    c.data.mixture = ml_collections.ConfigDict({kind: 1.0 for kind in RTS_KINDS})
    c.data.occlusion_prob = 0.5  # synthetic occlusion share (the paper gives none; ours)
    # Multi-instance records (scenes): the target is a "random" instance or the "largest", the
    # object a single-mask dataset (HQSeg-44K) and the evaluator keep.
    c.data.target_instance = "random"
    c.data.use_lsj = True
    c.data.lsj_range = (0.1, 2.0)
    c.data.flip_prob = 0.5
    c.data.skip_corrupt = False  # True: replace unreadable files and count them in the log
    c.data.num_workers = 0  # Grain worker processes (0 = threads in this process)
    c.data.read_threads = 2
    c.data.prefetch_batches = 2


def _add_bookkeeping_fields(c: ml_collections.ConfigDict) -> None:
    c.log_every_steps = 10
    c.checkpoint_every_steps = 500  # also at the end; 0 = only at the end
    c.keep_checkpoints = 3
    c.resume = True  # an existing workdir resumes from its latest checkpoint
    c.export_on_save = True  # refresh WORKDIR/export at every checkpoint, not only at the end
    c.async_checkpointing = True

    c.distributed = ml_collections.ConfigDict(
        dict(
            coordinator_address=_placeholder(str),  # "host:port"; None = auto-detect or single host
            num_processes=_placeholder(int),
            process_id=_placeholder(int),
        )
    )
    # Testing hook: poison the loss and gradients of this step (1-based, as logged; -1 = never).
    c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1))


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
    # cuDNN's fused kernel on a GPU where it fits, XLA elsewhere (TPU, CPU): one config for all.
    config.attention_impl = "fast"
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    return config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the field to fix."""
    for check in (_check_model, _check_batch, _check_data, _check_length, _check_checkpoints):
        message = check(config)
        if message:
            raise ConfigError(message)


def _check_model(config) -> str | None:
    if config.model_type not in SAM_VARIANTS:
        return f"config.model_type={config.model_type!r}; choose from {sorted(SAM_VARIANTS)}"
    img_size = SAM_VARIANTS[config.model_type].img_size
    if config.image_size is not None and config.image_size != img_size:
        return (
            f"config.image_size={config.image_size} but {config.model_type} takes {img_size} px "
            f"inputs: set image_size={img_size} (or leave it unset)"
        )
    try:
        subset_filter(config.trainable)
    except ValueError as error:
        return f"config.trainable={config.trainable!r}: {error}"
    if config.trainable == "plugins" and not config.with_plugins:
        return "config.trainable='plugins' needs config.with_plugins=True"
    if config.with_plugins:
        try:
            PluginConfig(**config.plugins.to_dict())
        except (TypeError, ValueError) as error:
            return f"config.plugins: {error}"
    is_hq = SAM_VARIANTS[config.model_type].hq
    for field in ("hq_from_sam", "hq_token_only"):
        if config.get(field) and not is_hq:
            return f"config.{field}=True needs an HQ-SAM model_type (hq_vit_*), not {config.model_type}"
    if config.get("hq_from_sam") and not config.sam_checkpoint:
        return "config.hq_from_sam=True needs config.sam_checkpoint (the plain SAM weights)"
    if config.dtype not in DTYPES:
        return f"config.dtype={config.dtype!r}; choose from {sorted(DTYPES)}"
    return None


def _check_batch(config) -> str | None:
    if config.batch_size < 1:
        return f"config.batch_size must be >= 1, got {config.batch_size}"
    if config.batch_size % jax.process_count():
        return (
            f"config.batch_size={config.batch_size} must divide over {jax.process_count()} "
            "processes"
        )
    if config.batch_size % jax.device_count():
        return (
            f"config.batch_size={config.batch_size} must be a multiple of the device count "
            f"({jax.device_count()}): the batch is split evenly over devices"
        )
    return None


def _check_data(config) -> str | None:
    if config.loss.sampling not in losses.SAMPLING_MODES:
        return f"config.loss.sampling={config.loss.sampling!r}; choose from {losses.SAMPLING_MODES}"
    if config.data.source not in DATA_SOURCES:
        return f"config.data.source={config.data.source!r}; choose from {DATA_SOURCES}"
    if config.data.source == "hqseg44k" and not config.data.root:
        return (
            "config.data.root is not set: point it at the folder holding HQSeg-44K (DIS5K/, "
            "thin_object_detection/, cascade_psp/), or use data.source='scenes'"
        )
    if config.data.source == "scenes" and config.data.scene_family not in SCENE_FAMILIES:
        return (
            f"config.data.scene_family={config.data.scene_family!r}; choose from {SCENE_FAMILIES}"
        )
    if config.data.source == "folders" and not (config.data.image_dir and config.data.mask_dir):
        return "data.source='folders' needs config.data.image_dir and config.data.mask_dir"
    return None


def _check_length(config) -> str | None:
    if config.total_steps is None and config.num_epochs <= 0:
        return f"config.num_epochs must be positive, got {config.num_epochs}"
    if config.total_steps is not None and config.total_steps < 1:
        return f"config.total_steps must be >= 1, got {config.total_steps}"
    return None


def _check_checkpoints(config) -> str | None:
    # Checked here, before the workdir is made or data read; their contents are checked on load.
    for field in ("sam_checkpoint", "init_checkpoint"):
        path = config.get(field)
        if path and "://" not in path and not os.path.exists(path):
            return (
                f"config.{field}={path!r} does not exist: give a converted checkpoint directory "
                "(convert official weights with convert/torch_to_flax.py), or unset it"
            )
    return None
