"""The demo's study: the paper's comparison (Table 2) and ablation (Table 5) at demo scale, plus a
generality check (`run_study`; `python -m stablesam_jax.demo --study --out DIR`).

Every row is trained for one epoch on the demo's training scenes over the same frozen demo SAM
(`recipes`): DT-SAM and PT-SAM with RTS, DSP without RTS, DSP with RTS, and Stable-SAM (DSP + DRP
+ RTS). All rows and SAM are evaluated on the demo's held-out scenes and, for the generality
check, on the other scene family (`GENERALITY_FAMILY`), which neither the demo SAM's pretraining
nor any row's training saw, with up to 8 objects per scene. The paper (Table 11) predicts that
tuning the decoder forgets more there than the plugins do.

Writes DIR/study.json, DIR/study.md and DIR/study_miou.png.
"""

from __future__ import annotations

import dataclasses
import os

from PIL import Image

from .. import evaluation
from .figures import bar_chart
from .pipeline import _say
from .recipes import eval_predictors, finish_run, recipe_config, start_run, train_runs
from .settings import FULL, DemoSettings

ROWS = ("DT-SAM", "PT-SAM", "DSP", "DSP + RTS", "Stable-SAM")
# The generality set: the family the demo does not train on (keyed by the demo's family), scene
# seed 6 (pretraining uses 1 and 5, training 2, evaluation 3, selection 4), up to 8 objects.
GENERALITY_FAMILY = {"clusters": "shapes", "shapes": "clusters"}
GENERALITY_SEED = 6
GENERALITY_MAX_OBJECTS = 8
RESULT_FILES = {"json": "study.json", "table": "study.md"}
FIGURE_FILE = "study_miou.png"


def datasets(settings: DemoSettings, generality_scenes: int) -> dict:
    """{"held-out": the demo's evaluation scenes, "generality": the other family's scenes}."""
    return {
        "held-out": evaluation.DatasetSpec(
            name="held-out",
            kind="scenes",
            num=settings.eval_scenes,
            seed=settings.eval_seed,
            **settings.scene_options(),
        ),
        "generality": evaluation.DatasetSpec(
            name="generality",
            kind="scenes",
            num=generality_scenes,
            seed=GENERALITY_SEED,
            size=256,
            max_objects=GENERALITY_MAX_OBJECTS,
            family=GENERALITY_FAMILY[settings.scene_family],
        ),
    }


def _results(pooled: dict, prompt_types) -> dict:
    keys = ("miou", "mbiou", "msf")
    return {
        model: {t: {k: float(by_type[t][k]) for k in keys} for t in prompt_types}
        for model, by_type in pooled.items()
    }


def generality_lines(held_out: dict, generality: dict, prompt_type: str) -> list[str]:
    """Each model's mIoU minus SAM's on both families for one prompt type."""
    lines = [f"mIoU minus SAM's, {prompt_type} (held-out -> generality):"]
    for model in held_out:
        if model == "SAM":
            continue
        deltas = [
            family[model][prompt_type]["miou"] - family["SAM"][prompt_type]["miou"]
            for family in (held_out, generality)
        ]
        lines.append(f"  {model:11s} {deltas[0]:+.1f} -> {deltas[1]:+.1f}")
    return lines


def _figure(held_out: dict, generality: dict, path, generality_family: str) -> str:
    charts = [
        bar_chart({m: v[t]["miou"] for m, v in family.items()}, title, "mIoU", 100.0)
        for family, t, title in (
            (held_out, "noisy_box", "noisy box, held-out"),
            (held_out, "one_point", "one point, held-out"),
            (generality, "noisy_box", f"noisy box, {generality_family}"),
        )
    ]
    canvas = Image.new("RGB", (sum(c.width for c in charts), charts[0].height), "white")
    x = 0
    for chart in charts:
        canvas.paste(chart, (x, 0))
        x += chart.width
    canvas.save(path)
    return str(path)


def run_study(
    out_dir: str | os.PathLike,
    settings: DemoSettings = FULL,
    sam_weights: str | None = None,
    generality_scenes: int | None = None,
    draw_figures: bool = True,
) -> dict:
    """Trains the study's rows, evaluates them with SAM on both families; writes the files and
    returns study.json's content."""
    run = start_run(out_dir, "Study (paper Tables 2, 5, 11)", sam_weights)
    runs = [(row, recipe_config(settings, run["checkpoint"], row)) for row in ROWS]
    models, summaries = train_runs(runs, run["work"])
    predictors = eval_predictors(run["sam"], models)
    reports, results, tables = {}, {}, []
    count = generality_scenes or max(1, settings.eval_scenes // 2)
    for family, spec in datasets(settings, count).items():
        _say(f"evaluating {len(predictors)} models on {spec.num} {family} scenes")
        report = evaluation.evaluate_report(
            predictors,
            [spec],
            settings.prompt_types,
            settings.num_prompts,
            settings.seed,
            keep_per_image=False,
        )
        reports[family] = report
        results[family] = _results(report["results"][evaluation.POOLED], settings.prompt_types)
        heading = f"# {family} scenes ({spec.family} family, scene seed {spec.seed})"
        tables.append(heading + "\n\n" + evaluation.format_table(report))
    summary = generality_lines(results["held-out"], results["generality"], "noisy_box")
    summary += generality_lines(results["held-out"], results["generality"], "one_point")
    figure = None
    if draw_figures:
        figure = _figure(
            results["held-out"],
            results["generality"],
            run["out_dir"] / FIGURE_FILE,
            GENERALITY_FAMILY[settings.scene_family],
        )
    info = {
        "results": results,
        "diagnostics": {
            family: report.get("diagnostics", {}).get(evaluation.POOLED, {})
            for family, report in reports.items()
        },
        "settings": dataclasses.asdict(settings),
        "generality": {
            "family": GENERALITY_FAMILY[settings.scene_family],
            "seed": GENERALITY_SEED,
            "max_objects": GENERALITY_MAX_OBJECTS,
            "scenes": count,
        },
        "training": summaries,
        "figure": figure,
    }
    text = "\n".join(tables) + "\n" + "\n".join(summary) + "\n"
    return finish_run(run, info, text, RESULT_FILES)
