"""The evaluation job: `run(config)` evaluates an eval config's models on its datasets and COCO
sets, writes `results.json` and `results.md` to `config.output_dir` and prints the table.

The configs are built from `configs`; the protocol is `protocol`'s, the loop `loop.evaluate_report`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write
from .coco_job import evaluate_coco_models
from .interface import Predictor
from .loop import evaluate_report
from .predictors import as_predictors, data_mesh
from .protocol import RESULTS_SCHEMA_VERSION, max_points_for
from .report import format_table, jsonable
from .sources import as_sample_sources
from .specs import ModelSpec, specs_from_config


def _models_to_run(specs: list[ModelSpec], predictors: Mapping[str, Predictor] | None) -> Any:
    if predictors is not None:
        return dict(predictors)
    if not specs:
        raise ValueError("no enabled models in the config (config.models)")
    for spec in specs:
        spec.validate()
    return specs


def _dataset_report(config, predictors: Mapping[str, Predictor], sources) -> dict:
    return evaluate_report(
        predictors,
        sources,
        tuple(config.prompt_types),
        int(config.num_prompts),
        int(config.seed),
        image_batch_size=config.get("image_batch_size"),
        progress=bool(config.get("progress", True)),
        keep_per_image=bool(config.get("keep_per_image", True)),
        loader_workers=int(config.get("loader_workers", 2)),
        metric_workers=int(config.get("metric_workers", 2)),
        metrics_on_device=bool(config.get("metrics_on_device", True)),
        diagnostics=bool(config.get("diagnostics", True)),
    )


def _write(report: dict, output_dir: Path) -> None:
    table = format_table(report)
    atomic_write(output_dir / "results.json", json.dumps(jsonable(report), indent=1))
    atomic_write(output_dir / "results.md", table)
    print(table)
    print(f"wrote {output_dir / 'results.json'} and {output_dir / 'results.md'}", file=sys.stderr)


def run(config, predictors: Mapping[str, Predictor] | None = None) -> dict:
    """The job: evaluate, write `results.json` and `results.md` to config.output_dir, print the
    table. `predictors` replaces the config's models (tests inject an oracle this way)."""
    specs, datasets, coco_sets = specs_from_config(config)
    models = _models_to_run(specs, predictors)
    if not datasets and not coco_sets:
        raise ValueError("nothing to evaluate: enable a dataset (config.datasets) or COCO set")
    # Bad paths fail here, before minutes of building large models.
    sources = as_sample_sources(datasets, config.get("max_images"))
    for spec in coco_sets:
        spec.check_paths()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    mesh = data_mesh()
    built = as_predictors(models, mesh=mesh, max_points=max_points_for(config.prompt_types))
    report: dict
    if datasets:
        report = _dataset_report(config, built, sources)
        if predictors is None:
            report["models"] = {s.name: s.describe() for s in specs}
    else:
        report = {"schema_version": RESULTS_SCHEMA_VERSION, "results": {}}
    if coco_sets:
        report["coco"] = evaluate_coco_models(
            built,
            coco_sets,
            seed=int(config.seed),
            progress=bool(config.get("progress", True)),
        )
    report["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    _write(report, output_dir)
    return report
