"""The paper's low-shot comparison (Table 7) at demo scale: PT-SAM, HQ-SAM and Stable-SAM, each
trained with RTS for 12 epochs on the first 220 and the first 440 of the demo's training scenes
over the frozen demo SAM, then evaluated with SAM on the demo's held-out scenes for noisy boxes
and one point (`run_low_shot`; `python -m stablesam_jax.demo --low-shot --out DIR`).

The recipes differ only in what they train (`training.trainable`): PT-SAM its output tokens and
single-mask MLP, HQ-SAM its own modules on the demo SAM (`hq_vit_demo`, HQ parts random at the
start, the loss on the HQ mask alone, scored on the HQ mask alone, as HQ-SAM trains and
evaluates), Stable-SAM its plugins. All three share the schedule: the demo's learning rate,
dropped x0.1 at epoch 10 (HQ-SAM's 12-epoch recipe), batch and prompt mixture as the demo's.
"""

from __future__ import annotations

import dataclasses
import os

from .. import evaluation
from .pipeline import _say
from .recipes import eval_predictors, finish_run, recipe_config, start_run, train_runs
from .settings import FULL, DemoSettings

METHODS = ("PT-SAM", "HQ-SAM", "Stable-SAM")
SCENE_COUNTS = (220, 440)
EPOCHS = 12
LR_DROP_EPOCH = 10
PROMPT_TYPES = ("noisy_box", "one_point")
RESULT_FILES = {"json": "low_shot.json", "table": "low_shot.md"}


def method_config(
    settings: DemoSettings,
    sam_checkpoint: str,
    method: str,
    num_scenes: int,
    epochs: int = EPOCHS,
):
    """The trainer config of one low-shot run: `recipes.recipe_config` of the method with
    `num_scenes` scenes and `epochs` epochs (the lr drops at epoch 10 of 12, at the same
    fraction for fewer)."""
    if method not in METHODS:
        raise ValueError(f"unknown low-shot method {method!r}; choose from {METHODS}")
    config = recipe_config(settings, sam_checkpoint, method)
    config.data.num_scenes = num_scenes
    config.num_epochs = float(epochs)
    config.optimizer.lr_drop_epochs = (epochs * LR_DROP_EPOCH / EPOCHS,)
    config.optimizer.lr_drop_factor = 0.1
    steps = epochs * max(1, num_scenes // settings.batch_size)
    config.log_every_steps = max(1, steps // 8)
    return config


def row_name(method: str, num_scenes: int) -> str:
    return f"{method} ({num_scenes})"


def results_json(pooled: dict, names) -> dict:
    """{row name: {prompt type: {"miou", "mbiou", "msf"}}} from eval's pooled results."""
    return {
        name: {
            t: {m: float(pooled[name][t][m]) for m in ("miou", "mbiou", "msf")}
            for t in PROMPT_TYPES
        }
        for name in names
    }


def format_table(results: dict) -> str:
    """The paper's Table 7 layout: one row per model, mIoU / mBIoU / mSF per prompt type."""
    header = "| Model | " + " | ".join(f"{t} mIoU / mBIoU / mSF" for t in PROMPT_TYPES) + " |"
    lines = [header, "|---" * (1 + len(PROMPT_TYPES)) + "|"]
    for name, per_type in results.items():
        cells = [
            " / ".join(f"{per_type[t][m]:.1f}" for m in ("miou", "mbiou", "msf"))
            for t in PROMPT_TYPES
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_low_shot(
    out_dir: str | os.PathLike,
    settings: DemoSettings = FULL,
    sam_weights: str | None = None,
    scene_counts: tuple[int, ...] = SCENE_COUNTS,
    epochs: int = EPOCHS,
) -> dict:
    """Trains the low-shot models (each method on each scene count), evaluates them with SAM;
    writes DIR/low_shot.json and DIR/low_shot.md and returns the json's content."""
    run = start_run(out_dir, "Low-shot comparison (paper Table 7)", sam_weights)
    runs = [
        (row_name(m, n), method_config(settings, run["checkpoint"], m, n, epochs))
        for n in scene_counts
        for m in METHODS
    ]
    models, summaries = train_runs(runs, run["work"])
    _say(f"evaluating {1 + len(models)} models on {settings.eval_scenes} held-out scenes")
    dataset = evaluation.DatasetSpec(
        name="scenes",
        kind="scenes",
        num=settings.eval_scenes,
        seed=settings.eval_seed,
        **settings.scene_options(),
    )
    report = evaluation.evaluate_report(
        eval_predictors(run["sam"], models),
        [dataset],
        PROMPT_TYPES,
        settings.num_prompts,
        settings.seed,
        keep_per_image=False,
        diagnostics=False,
    )
    results = results_json(report["results"][evaluation.POOLED], ["SAM", *models])
    info = {
        "results": results,
        "settings": dataclasses.asdict(settings),
        "scene_counts": list(scene_counts),
        "epochs": epochs,
        "training": summaries,
    }
    return finish_run(run, info, format_table(results), RESULT_FILES)
