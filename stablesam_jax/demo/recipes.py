"""The training recipes the demo compares, each over the frozen demo SAM with the demo's trainer
settings (`pipeline.train_config`): what is trained and with which prompts.

- DT-SAM: the whole mask decoder. PT-SAM: the decoder's output tokens and the single-mask MLP.
  HQ-SAM: its own modules on the demo SAM (`hq_vit_demo`; HQ parts random at the start, the loss
  and the score on the HQ mask alone, as HQ-SAM trains and evaluates).
- DSP: the deformable sampling plugin alone (`use_drp=False`); Stable-SAM: DSP + DRP.
- RTS (the paper's robust training strategy) is the demo's prompt mixture with synthetic
  occlusion; "without RTS" is SAM's own high-quality prompts (tight boxes, 3-10 points, the
  demo SAM's pretraining mixture) with no occlusion.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import ml_collections

from .. import pretrained, training
from ..evaluation.predictors import SamEvalPredictor, data_mesh
from ..modeling.sam import count_params
from ..training.trainable import subset_filter
from ..utils.io import atomic_write
from .pipeline import _fresh_dirs, _load_sam, _say, train_config
from .settings import DemoSettings

# SAM's prompts: what the demo SAM was pretrained with (train/configs/demo_pretrain.py).
HIGH_QUALITY_MIXTURE = {"gt_box": 3.0, "three_points": 1.0, "five_points": 1.0, "ten_points": 1.0}


@dataclasses.dataclass(frozen=True)
class Recipe:
    trainable: str
    model_type: str = "vit_demo"
    plugins: bool = False
    use_drp: bool = True
    rts: bool = True
    hq: bool = False  # HQ-SAM: built from the demo SAM, trained and scored on the HQ mask


RECIPES = {
    "DT-SAM": Recipe("decoder"),
    "PT-SAM": Recipe("prompt_tokens"),
    "HQ-SAM": Recipe("hq", model_type="hq_vit_demo", hq=True),
    "DSP": Recipe("plugins", plugins=True, use_drp=False, rts=False),
    "DSP + RTS": Recipe("plugins", plugins=True, use_drp=False),
    "Stable-SAM": Recipe("plugins", plugins=True),
}


def recipe_config(settings: DemoSettings, sam_checkpoint: str, name: str):
    """The trainer config of recipe `name` (one epoch over the demo's training scenes; callers
    change the length)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    recipe = RECIPES[name]
    config = train_config(settings, sam_checkpoint)
    config.model_type = recipe.model_type
    config.trainable = recipe.trainable
    config.with_plugins = recipe.plugins
    config.plugins.use_drp = recipe.use_drp
    config.hq_from_sam = recipe.hq
    config.hq_token_only = recipe.hq
    if not recipe.rts:
        config.data.mixture = dict(HIGH_QUALITY_MIXTURE)
        config.data.occlusion_prob = 0.0
    return config


def train_runs(runs: list[tuple[str, ml_collections.ConfigDict]], work: Path) -> tuple[dict, dict]:
    """Trains each (row name, config) in order under work/; returns ({row name: trained model},
    {row name: steps, trainable subset and count, final metrics, seconds})."""
    models, summaries = {}, {}
    for i, (name, config) in enumerate(runs, 1):
        _say(
            f"[{i}/{len(runs)}] training {name}: subset {config.trainable!r}, "
            f"{config.data.num_scenes} scenes x {config.num_epochs:g} epochs"
        )
        tick = time.perf_counter()
        folder = "".join(c if c.isalnum() else "_" for c in name.lower())
        trained = training.train(config, str(work / folder))
        models[name] = trained["model"]
        summaries[name] = {
            "steps": trained["step"],
            "trainable": config.trainable,
            "num_trainable": count_params(trained["model"], subset_filter(config.trainable)),
            "final_metrics": trained["metrics"],
            "seconds": round(time.perf_counter() - tick, 1),
        }
    return models, summaries


def start_run(out_dir: str | os.PathLike, title: str, sam_weights: str | None) -> dict:
    """A comparison run's start: fresh DIR/work, the frozen demo SAM and its checkpoint
    directory. Returns {"out_dir", "work", "sam", "checkpoint", "weights", "sam_meta",
    "started"}."""
    started = time.perf_counter()
    out_dir, work = _fresh_dirs(out_dir)
    training.configure_logging()
    _say(
        f"{title} on {jax.device_count()} {jax.devices()[0].platform} device(s); output in {out_dir}"
    )
    weights = sam_weights or str(pretrained.DEMO_SAM_FILE)
    sam, checkpoint, sam_meta = _load_sam(weights, work)
    return {
        "out_dir": out_dir,
        "work": work,
        "sam": sam,
        "checkpoint": os.path.abspath(checkpoint),
        "weights": weights,
        "sam_meta": sam_meta,
        "started": started,
    }


def eval_predictors(sam, models: dict) -> dict:
    """SAM and the trained models behind the evaluator, on one mesh (HQ-SAM scored on its HQ
    mask alone)."""
    mesh = data_mesh()
    predictors = {"SAM": SamEvalPredictor(sam, mesh=mesh)}
    for name, model in models.items():
        predictors[name] = SamEvalPredictor(model, mesh=mesh, hq_token_only=model.config.hq)
    return predictors


def finish_run(run: dict, info: dict, text: str, files: dict) -> dict:
    """Writes files["json"] (info plus the SAM weights and run time) and files["table"] (text)
    into the run's folder, prints the text and returns the json's content."""
    info = {
        **info,
        "sam_weights": run["weights"],
        "sam_meta": run["sam_meta"],
        "seconds": round(time.perf_counter() - run["started"], 1),
    }
    out_dir = run["out_dir"]
    atomic_write(out_dir / files["json"], json.dumps(info, indent=1, default=str) + "\n")
    atomic_write(out_dir / files["table"], text)
    _say("")
    _say(text)
    _say(f"time: {info['seconds']:.0f}s")
    return info
