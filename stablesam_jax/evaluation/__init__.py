"""Evaluation of SAM variants under prompts of varying quality (the paper's Tables 2-3).

`from stablesam_jax import evaluation; evaluation.run(config)` runs an eval config (built with
`base_config`, `model_config`, the `*_dataset_config` helpers and `coco_config`); `evaluate` and
`evaluate_report` run the loop in-process; `format_table` renders a report. The modules, one role
each:

    protocol        the protocol's names (prompt types, metric keys, "pooled") and shared checks
    specs           ModelSpec / DatasetSpec / CocoSpec: what a config names, built or opened
    interface       Sample, PromptBatch, Prediction and the Predictor protocol
    predictors      OraclePredictor, SamEvalPredictor (sharded JAX encode / decode)
    device_metrics  upsampling and the metrics' pixel counts on the device
    metrics         the metrics on host masks (numpy)
    sources         datasets as Sample sources, loaded ahead with their prompts
    aggregate       per-image values -> per-dataset and pooled means
    loop            evaluate_report / evaluate
    coco            COCOeval of one predict_fn (numpy / pycocotools only)
    coco_job        COCO noisy-box mAP for the job's predictors
    report          Markdown tables and JSON-safe values
    configs         the config building blocks
    job             run(config): evaluate, write results.json / results.md
"""

import importlib
from typing import TYPE_CHECKING

# Lazy (PEP 562): a data or metric worker that imports `stablesam_jax.evaluation.metrics` must not
# pay for importing JAX and the models through this package's re-exports.
_EXPORTS = {
    "COCO_IOU_BINS": ".protocol",
    "CocoSpec": ".specs",
    "DEFAULT_PROMPT_TYPES": ".protocol",
    "DatasetSpec": ".specs",
    "METRIC_KEYS": ".protocol",
    "ModelSpec": ".specs",
    "OraclePredictor": ".predictors",
    "PAPER_TABLE2_PROMPT_TYPES": ".protocol",
    "POOLED": ".protocol",
    "PROMPT_TYPES": "..data.prompts",
    "PROMPT_TYPE_TITLES": ".protocol",
    "Prediction": ".interface",
    "Predictor": ".interface",
    "PromptBatch": ".interface",
    "RESULTS_SCHEMA_VERSION": ".protocol",
    "SamEvalPredictor": ".predictors",
    "Sample": ".interface",
    "as_predictors": ".predictors",
    "as_sample_sources": ".sources",
    "base_config": ".configs",
    "bin_name": ".coco_job",
    "coco_config": ".configs",
    "coco_predict_fn": ".coco_job",
    "data_mesh": ".predictors",
    "encoder_groups": ".predictors",
    "evaluate": ".loop",
    "evaluate_coco_models": ".coco_job",
    "evaluate_report": ".loop",
    "folder_dataset_config": ".configs",
    "format_table": ".report",
    "jsonable": ".report",
    "layout_dataset_config": ".configs",
    "max_points_for": ".protocol",
    "metrics_from_counts": ".device_metrics",
    "model_config": ".configs",
    "run": ".job",
    "scenes_dataset_config": ".configs",
    "specs_from_config": ".specs",
    "tfds_dataset_config": ".configs",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from ..data.prompts import PROMPT_TYPES
    from .coco_job import bin_name, coco_predict_fn, evaluate_coco_models
    from .configs import (
        base_config,
        coco_config,
        folder_dataset_config,
        layout_dataset_config,
        model_config,
        scenes_dataset_config,
        tfds_dataset_config,
    )
    from .device_metrics import metrics_from_counts
    from .interface import Prediction, Predictor, PromptBatch, Sample
    from .job import run
    from .loop import evaluate, evaluate_report
    from .predictors import (
        OraclePredictor,
        SamEvalPredictor,
        as_predictors,
        data_mesh,
        encoder_groups,
    )
    from .protocol import (
        COCO_IOU_BINS,
        DEFAULT_PROMPT_TYPES,
        METRIC_KEYS,
        PAPER_TABLE2_PROMPT_TYPES,
        POOLED,
        PROMPT_TYPE_TITLES,
        RESULTS_SCHEMA_VERSION,
        max_points_for,
    )
    from .report import format_table, jsonable
    from .sources import as_sample_sources
    from .specs import CocoSpec, DatasetSpec, ModelSpec, specs_from_config

__all__ = [
    "COCO_IOU_BINS",
    "CocoSpec",
    "DEFAULT_PROMPT_TYPES",
    "DatasetSpec",
    "METRIC_KEYS",
    "ModelSpec",
    "OraclePredictor",
    "PAPER_TABLE2_PROMPT_TYPES",
    "POOLED",
    "PROMPT_TYPES",
    "PROMPT_TYPE_TITLES",
    "Prediction",
    "Predictor",
    "PromptBatch",
    "RESULTS_SCHEMA_VERSION",
    "SamEvalPredictor",
    "Sample",
    "as_predictors",
    "as_sample_sources",
    "base_config",
    "bin_name",
    "coco_config",
    "coco_predict_fn",
    "data_mesh",
    "encoder_groups",
    "evaluate",
    "evaluate_coco_models",
    "evaluate_report",
    "folder_dataset_config",
    "format_table",
    "jsonable",
    "layout_dataset_config",
    "max_points_for",
    "metrics_from_counts",
    "model_config",
    "run",
    "scenes_dataset_config",
    "specs_from_config",
    "tfds_dataset_config",
]
