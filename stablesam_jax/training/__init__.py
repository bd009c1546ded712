"""Training: Stable-SAM's RTS recipe, the DT-SAM / PT-SAM baselines and SAM pretraining.

    from stablesam_jax import training
    config = training.paper_config()
    result = training.train(config, workdir)

Modules: `config` (fields, paper recipe, checks), `trainable` (which weights a recipe trains),
`data` (record source, batch stream, run length), `optim` (optimizer, schedule), `losses`,
`step` (the pure `loss_fn` / `train_step`), `distributed` (multi-process setup, mesh, collectives),
`trainer` (the split model, jitted step and export), `loop` (`train`: run, checkpoint, resume),
`metric_writer` (TensorBoard).
"""

from .config import DATA_SOURCES, DTYPES, ConfigError, default_config, paper_config, validate_config
from .data import (
    DEVICE_FIELDS,
    iterate_batches,
    make_dataset,
    make_source,
    steps_per_epoch,
    total_steps,
)
from .distributed import (
    initialize_distributed,
    local_copy,
    make_mesh,
    on_process_zero,
    replicate,
    sync,
)
from .loop import METRICS_FILE, NonFiniteLossError, configure_logging, train
from .optim import make_optimizer, make_schedule, optimizer_kind
from .step import LossSettings, ModelDef, StepSettings, encode, loss_fn, split_model, train_step
from .trainable import TRAINABLE_SUBSETS, subset_filter
from .trainer import Trainer, build_model, export, export_kind

__all__ = [
    "DATA_SOURCES",
    "DEVICE_FIELDS",
    "DTYPES",
    "METRICS_FILE",
    "TRAINABLE_SUBSETS",
    "ConfigError",
    "LossSettings",
    "ModelDef",
    "NonFiniteLossError",
    "StepSettings",
    "Trainer",
    "build_model",
    "configure_logging",
    "default_config",
    "encode",
    "export",
    "export_kind",
    "initialize_distributed",
    "iterate_batches",
    "local_copy",
    "loss_fn",
    "make_dataset",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_source",
    "on_process_zero",
    "optimizer_kind",
    "paper_config",
    "replicate",
    "split_model",
    "steps_per_epoch",
    "subset_filter",
    "sync",
    "total_steps",
    "train",
    "train_step",
    "validate_config",
]
