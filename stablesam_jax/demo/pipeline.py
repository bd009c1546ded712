"""The demo run: the frozen demo SAM, its Stable-SAM plugins trained with RTS, both evaluated on
held-out generated scenes, the table, the figures and demo_info.json (`run`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import jax

from .. import evaluation, pretrained, training
from ..builder import build_sam, save_sam
from ..evaluation.read_swap import format_read_swap_table, read_swap_report
from ..utils.io import atomic_write
from .figure_model import make_figures, paired_offsets
from .settings import FULL, RESULT_KEYS, TRAIN_SCENE_SEED, DemoSettings


def _say(message: str) -> None:
    print(message, flush=True)


def train_config(settings: DemoSettings, sam_checkpoint: str):
    """The trainer config of the demo's Stable-SAM run (RTS, plugins only, one epoch)."""
    config = training.default_config()
    config.model_type = "vit_demo"
    config.image_size = 256
    config.with_plugins = True
    config.trainable = "plugins"
    config.sam_checkpoint = sam_checkpoint
    config.plugins.offset_scale = settings.offset_scale
    config.plugins.center_offsets = settings.center_offsets
    config.plugins.padding = settings.padding
    config.plugins.routing = settings.routing
    config.optimizer.dsp_lr_multiplier = settings.dsp_lr_multiplier
    config.optimizer.drp_scale_lr_multiplier = settings.drp_scale_lr_multiplier
    config.seed = settings.seed
    config.batch_size = settings.batch_size
    config.num_epochs = 1.0
    config.optimizer.learning_rate = settings.learning_rate
    config.data.source = "scenes"
    config.data.num_scenes = settings.train_scenes
    config.data.scene_seed = TRAIN_SCENE_SEED
    config.data.scene_size = 256
    config.data.scene_family = settings.scene_family
    config.data.max_objects = settings.scene_options()["max_objects"]
    config.data.mixture = dict(settings.mixture)
    config.data.occlusion_prob = settings.occlusion_prob
    config.data.target_instance = settings.train_target
    config.data.use_lsj = settings.lsj_range is not None
    if settings.lsj_range is not None:
        config.data.lsj_range = tuple(settings.lsj_range)
    config.data.read_threads = 2
    config.loss.sampling = "dense"  # 64x64 logits: every pixel is cheaper than 12,544 points
    config.log_every_steps = max(1, settings.train_steps // 16)
    config.checkpoint_every_steps = 0  # only at the end: the run is short
    config.keep_checkpoints = 1
    config.export_on_save = True
    return config


def results_json(pooled: dict, prompt_types) -> dict:
    """{"sam"|"stable_sam": {prompt type: {"miou", "mbiou", "msf"}}} from eval's pooled results."""
    return {
        key: {
            t: {m: float(pooled[name][t][m]) for m in ("miou", "mbiou", "msf")}
            for t in prompt_types
        }
        for name, key in RESULT_KEYS.items()
    }


def _load_sam(weights: str, work: Path):
    """(SAM, its checkpoint directory for the trainer, where it came from) for a packaged .npz
    or an Orbax "sam" checkpoint directory."""
    if os.path.isdir(weights):
        return build_sam(pretrained.DEMO_MODEL_TYPE, weights), weights, {"source": weights}
    sam = pretrained.build_demo_sam(weights)
    # The trainer reads SAM from a checkpoint directory.
    sam_checkpoint = save_sam(sam, str(work / "sam"))
    return sam, sam_checkpoint, pretrained.read_npz(weights)[1]


def _train_plugins(settings: DemoSettings, sam_checkpoint: str, work: Path) -> dict:
    """The trainer's result (with the trained Stable-SAM as "model") for the demo's RTS run."""
    config = train_config(settings, os.path.abspath(sam_checkpoint))
    _say(
        f"[2/4] training the Stable-SAM plugins with RTS: {settings.train_scenes} generated "
        f"scenes, batch {settings.batch_size}, {settings.train_steps} steps (one epoch), "
        f"lr {settings.learning_rate:g}, offset scale s_p {settings.offset_scale:g}"
    )
    return training.train(config, str(work / "train"))


def _drp_a1(pooled: dict, prompt_types) -> dict[str, float]:
    """Stable-SAM's mean DRP routing weight a1 per prompt type (where the report has it)."""
    return {
        t: float(pooled["Stable-SAM"][t]["drp_a1"])
        for t in prompt_types
        if "drp_a1" in pooled["Stable-SAM"][t]
    }


def drp_scales(model) -> dict[str, float]:
    """{"layer<i>": DRP's learned scale s} of each block with a DRP: with softmax routing
    a1 + a2 = s for every prompt, with sigmoid each of a1, a2 lies in (0, s)."""
    layers = model.mask_decoder.transformer.layers
    return {
        f"layer{i}": float(layer.drp.scale[...])
        for i, layer in enumerate(layers)
        if layer.drp is not None
    }


def _held_out_scenes(settings: DemoSettings, num: int):
    """The first `num` held-out scenes as a `DatasetSpec` named "scenes"."""
    return evaluation.DatasetSpec(
        name="scenes", kind="scenes", num=num, seed=settings.eval_seed, **settings.scene_options()
    )


def _evaluate(sam, stable_sam, settings: DemoSettings) -> dict:
    """The evaluation report of both models on the held-out scenes."""
    dataset = _held_out_scenes(settings, settings.eval_scenes)
    return evaluation.evaluate_report(
        {"SAM": sam, "Stable-SAM": stable_sam},
        [dataset],
        settings.prompt_types,
        settings.num_prompts,
        settings.seed,
        keep_per_image=False,
    )


def _read_swap(sam, stable_sam, settings: DemoSettings) -> dict:
    """SAM's read swap (`evaluation.read_swap`) in the plugins' block, on the first
    `read_swap_scenes` held-out scenes with the evaluation's prompts."""
    dataset = _held_out_scenes(settings, settings.read_swap_scenes)
    source = evaluation.as_sample_sources([dataset])["scenes"]
    layer = min(stable_sam.plugin_config.dsp_layers)
    rows = read_swap_report(
        sam, source, settings.prompt_types, settings.num_prompts, settings.seed, layer=layer
    )
    return {"layer": layer, "scenes": settings.read_swap_scenes, "miou": rows}


def _fresh_dirs(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)  # a fresh run: the trainer would resume otherwise
    work.mkdir()
    return out_dir, work


def run(
    out_dir: str | os.PathLike,
    settings: DemoSettings = FULL,
    sam_weights: str | None = None,
    *,
    draw_figures: bool = True,
):
    """Runs the whole demo; returns demo_info (also written to DIR/demo_info.json)."""
    started = time.perf_counter()
    out_dir, work = _fresh_dirs(out_dir)
    timings: dict[str, float] = {}
    training.configure_logging()
    _say(
        f"Stable-SAM demo on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} CPU cores; output in {out_dir}"
    )

    # 1. The frozen SAM.
    tick = time.perf_counter()
    weights = sam_weights or str(pretrained.DEMO_SAM_FILE)
    sam, sam_checkpoint, sam_meta = _load_sam(weights, work)
    timings["load_sam"] = time.perf_counter() - tick
    _say(f"[1/4] SAM: {weights} ({sam.model_type})")

    # 2. Stable-SAM: plugins trained with RTS on the frozen SAM.
    tick = time.perf_counter()
    trained = _train_plugins(settings, sam_checkpoint, work)
    stable_sam = trained["model"]
    timings["train_plugins"] = time.perf_counter() - tick

    # 3. Evaluation on held-out scenes.
    tick = time.perf_counter()
    _say(
        f"[3/4] evaluating SAM and Stable-SAM on {settings.eval_scenes} held-out scenes, "
        f"{settings.num_prompts} prompts per image and prompt type"
    )
    report = _evaluate(sam, stable_sam, settings)
    timings["evaluate"] = time.perf_counter() - tick
    pooled = report["results"][evaluation.POOLED]
    results = results_json(pooled, settings.prompt_types)
    drp_a1 = _drp_a1(pooled, settings.prompt_types)
    table = evaluation.format_table(report)
    atomic_write(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write(out_dir / "results.md", table)
    tick = time.perf_counter()
    paired = paired_offsets(sam, stable_sam, settings)
    timings["paired_offsets"] = time.perf_counter() - tick
    tick = time.perf_counter()
    swap = _read_swap(sam, stable_sam, settings)
    timings["read_swap"] = time.perf_counter() - tick

    # 4. Figures.
    tick = time.perf_counter()
    _say("[4/4] drawing the figures")
    figure_paths = make_figures(out_dir, sam, stable_sam, settings, drp_a1) if draw_figures else {}
    timings["figures"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started

    info = {
        "settings": dataclasses.asdict(settings),
        "sam_weights": weights,
        "sam_meta": sam_meta,
        "train": {
            "steps": trained["step"],
            "final_metrics": trained["metrics"],
            "images_per_second": trained["images_per_second"],
            "plugins": trained["export"],
        },
        "drp_a1": drp_a1,
        "drp_scale": drp_scales(stable_sam),
        # Attention on the target and the DSP's offset statistics (docs/design.md, Diagnostics).
        "diagnostics": report.get("diagnostics", {}).get(evaluation.POOLED, {}),
        "paired_offsets": paired,
        "read_swap": swap,
        "num_eval_images": pooled["SAM"][settings.prompt_types[0]]["num_images"],
        "figures": figure_paths,
        "timings_seconds": timings,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "evaluation": report,
    }
    atomic_write(out_dir / "demo_info.json", json.dumps(info, indent=1, default=str) + "\n")
    _say("")
    _say(table)
    _say(_read_swap_text(swap, settings.prompt_types))
    _say(_summary(results, paired, timings, info["drp_scale"], settings.routing))
    return info


def _read_swap_text(swap: dict, prompt_types) -> str:
    return (
        f"SAM's read swap, block {swap['layer']} (the plugins' block), first {swap['scenes']} "
        "held-out scenes, mIoU: each prompt type with a part of the decoder taken from the GT "
        "box's run: the output tokens' read in that block (gt_box_read), that read zeroed "
        "(no_read), the image tokens the mask is read from (gt_box_image)\n"
        + format_read_swap_table(swap["miou"], prompt_types).rstrip()
    )


def _paired_line(paired: dict) -> str:
    """The paired offset comparison (`paired_offsets`) in one line."""
    across = paired["noisy_box_across_images"]
    return (
        f"DSP offset fields on {paired['images']} images (mean |offset| "
        f"{paired['offset_abs']:.2f} cells), mean distance in cells: noisy box vs one point, same "
        f"image {paired['noisy_box_vs_one_point']:.2f}; two noisy boxes, same image "
        f"{paired['noisy_box_vs_noisy_box']:.2f}; noisy boxes of two images "
        + ("-" if across is None else f"{across:.2f}")
    )


def _summary(
    results: dict, paired: dict, timings: dict, scales: dict[str, float], routing: str
) -> str:
    lines = ["Stable-SAM minus SAM (mIoU / mBIoU / mSF points):"]
    for prompt_type in results["sam"]:
        deltas = [
            results["stable_sam"][prompt_type][m] - results["sam"][prompt_type][m]
            for m in ("miou", "mbiou", "msf")
        ]
        lines.append(f"  {prompt_type:13s} " + " / ".join(f"{d:+.1f}" for d in deltas))
    if scales:
        scale_text = ", ".join(f"{name} {value:.3f}" for name, value in scales.items())
        lines.append(f"DRP ({routing} routing) scale s: {scale_text}")
    if paired:
        lines.append(_paired_line(paired))
    lines.append(
        "time: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items())
    )
    return "\n".join(lines)
