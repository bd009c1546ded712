"""The DSP's ceiling on the demo SAM (`run_oracle`; `python -m stablesam_jax.demo --oracle --out
DIR`): the frozen demo SAM with its DSP's samples placed by the ground truth instead of a trained
offset network (`evaluation.oracle`), on the demo's held-out scenes, for the DSP in the second
two-way block (the paper's place and the demo's), the first, and both. No training: the table
says how much moving the samples toward or onto the object (the paper's mechanism) could gain
there on this SAM, before any plugin training. A trained field may do something else (a shift
that corrects the decoder, say); the diagnostics of a trained model say what it did. The
ceiling (`evaluation.oracle_fit`) bounds every field, rule or not: for the paper's block, on the
first `ceiling_scenes` held-out scenes, each prompt's samples are any mixture of the features
within s_p cells, fitted to the ground truth.
"""

from __future__ import annotations

import time

from .. import evaluation
from ..builder import build_stable_sam
from ..evaluation import oracle, oracle_fit
from ..evaluation.sources import as_sample_sources
from .pipeline import _say
from .recipes import finish_run, start_run
from .settings import DemoSettings

# Where the DSP sits: two-way block indices (the demo's Stable-SAM uses (1,)).
PLACEMENTS = {"block 1 (paper)": (1,), "block 0": (0,), "blocks 0 and 1": (0, 1)}
RESULT_FILES = {"json": "oracle.json", "table": "oracle.md"}
CEILING_PLACEMENT = "block 1 (paper)"
CEILING_ROW_NAMES = {
    "none": "none (SAM)",
    "mixture_c1": "best mixture, c = 1 (any DSP field)",
    "own_cell_free_c": "own cell weighted, c fitted (moving nothing)",
    "mixture_free_c": "best mixture, c fitted (any DSP with DRP)",
}


def oracle_models(sam_checkpoint: str, model_type: str, placements: dict) -> dict:
    """{placement: the frozen SAM with a fixed-offset DSP (no DRP) in those blocks}."""
    return {
        name: oracle.oracle_model(
            build_stable_sam(model_type, sam_checkpoint, use_drp=False, dsp_layers=layers)
        )
        for name, layers in placements.items()
    }


def format_ceiling_table(report: dict, prompt_types) -> str:
    """The ceiling report as a Markdown table: mIoU / mSF per prompt type, then the fitted rows'
    mean loss before -> after and mean c."""
    header = "| samples | " + " | ".join(prompt_types) + " | loss before -> after, c |"
    lines = [header, "|---" * (len(prompt_types) + 2) + "|"]
    for row, cells in report.items():
        scores = [f"{cells[t]['miou']:.1f} / {cells[t]['msf']:.1f}" for t in prompt_types]
        fit = "-"
        if "loss_after" in cells[prompt_types[0]]:
            fit = ", ".join(
                f"{cells[t]['loss_before']:.3f} -> {cells[t]['loss_after']:.3f} "
                f"(c {cells[t]['scale']:.2f})"
                for t in prompt_types
            )
        lines.append(f"| {CEILING_ROW_NAMES[row]} | " + " | ".join(scores) + f" | {fit} |")
    return "\n".join(lines) + "\n"


def _ceiling_text(ceiling: dict, settings: DemoSettings, num_scenes: int) -> str:
    lines = [
        f"The plugins' ceiling, DSP in {CEILING_PLACEMENT}, on the first "
        f"{num_scenes} of these scenes: each prompt's samples are the best mixture "
        f"of the features within s_p = {settings.offset_scale:g} cells (weights >= 0 summing to "
        f"at most c), fitted to the ground truth with {settings.ceiling_steps} Adam steps; every "
        "DSP field (c = 1), and with DRP every a1 + a2 = c, is such a mixture. The control moves "
        "nothing: each sample is its own cell's feature times a fitted weight of at most c.",
        "",
        format_ceiling_table(ceiling, settings.prompt_types).rstrip(),
    ]
    return "\n".join(lines)


def _report_text(reports: dict, settings: DemoSettings) -> str:
    lines = [
        f"DSP oracle on {settings.eval_scenes} held-out {settings.scene_family} scenes (seed "
        f"{settings.eval_seed}), {settings.num_prompts} prompts per image and type, mIoU / mSF; "
        f"'toward' moves each sample at most s_p = {settings.offset_scale:g} cells toward the "
        "target, 'onto_target' all the way, 'random_direction' as far as 'toward' in a random "
        "direction; 'none' is SAM. Under each table, for every box prompt type: how much of the "
        "target lies outside the box, how much of that part and of the part inside the box the "
        "masks cover, and the masks' pixels outside the target per target pixel (spill), in %, "
        "pooled over all masks.",
    ]
    for name, report in reports.items():
        lines += [
            "",
            f"DSP in {name}:",
            "",
            oracle.format_oracle_table(report, settings.prompt_types).rstrip(),
        ]
        for prompt_type in settings.prompt_types:
            if "box_cut" in report[oracle.NO_FIELD][prompt_type]:
                lines += [
                    "",
                    f"{prompt_type}, where the masks fall against the box:",
                    "",
                    oracle.format_box_cut_table(report, prompt_type).rstrip(),
                ]
    return "\n".join(lines)


def _eval_source(settings: DemoSettings, num: int):
    dataset = evaluation.DatasetSpec(
        name="scenes", kind="scenes", num=num, seed=settings.eval_seed, **settings.scene_options()
    )
    return as_sample_sources([dataset])["scenes"]


def run_oracle(out_dir, settings: DemoSettings, sam_weights: str | None = None) -> dict:
    """Runs the oracle for every placement; writes DIR/oracle.json and DIR/oracle.md."""
    run = start_run(out_dir, "Stable-SAM DSP oracle", sam_weights)
    source = _eval_source(settings, settings.eval_scenes)
    models = oracle_models(run["checkpoint"], run["sam"].model_type, PLACEMENTS)
    reports = {}
    for i, (name, model) in enumerate(models.items(), 1):
        _say(f"[{i}/{len(models)}] DSP in {name}: {len(source)} scenes")
        tick = time.perf_counter()
        reports[name] = oracle.oracle_report(
            model,
            source,
            settings.prompt_types,
            settings.num_prompts,
            settings.seed,
            limit=settings.offset_scale,
        )
        _say(f"      {time.perf_counter() - tick:.0f}s")
    ceiling_scenes = min(settings.ceiling_scenes, settings.eval_scenes)
    _say(f"[ceiling] DSP in {CEILING_PLACEMENT}: {ceiling_scenes} scenes")
    tick = time.perf_counter()
    ceiling = oracle_fit.ceiling_report(
        build_stable_sam(
            run["sam"].model_type,
            run["checkpoint"],
            use_drp=False,
            dsp_layers=PLACEMENTS[CEILING_PLACEMENT],
        ),
        _eval_source(settings, ceiling_scenes),
        settings.prompt_types,
        settings.num_prompts,
        settings.seed,
        radius=settings.offset_scale,
        steps=settings.ceiling_steps,
    )
    _say(f"      {time.perf_counter() - tick:.0f}s")
    info = {
        "settings": {
            "eval_scenes": settings.eval_scenes,
            "eval_seed": settings.eval_seed,
            "scene_family": settings.scene_family,
            "num_prompts": settings.num_prompts,
            "offset_scale": settings.offset_scale,
            "seed": settings.seed,
            "ceiling_scenes": ceiling_scenes,
            "ceiling_steps": settings.ceiling_steps,
        },
        "placements": {name: list(layers) for name, layers in PLACEMENTS.items()},
        "results": reports,
        "ceiling": {"placement": CEILING_PLACEMENT, "results": ceiling},
    }
    text = (
        _report_text(reports, settings) + "\n\n" + _ceiling_text(ceiling, settings, ceiling_scenes)
    )
    return finish_run(run, info, text, RESULT_FILES)
