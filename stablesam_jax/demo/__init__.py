"""The demo: Stable-SAM's stability gain, end to end, on data the project generates.

  python -m stablesam_jax.demo --out DIR            # about 10-15 minutes on a 2-core CPU
  python -m stablesam_jax.demo --out DIR --quick    # a 1-2 minute smoke run (CI)

1. Loads the demo SAM (`vit_demo`: 256 px input, a 4-block 128-wide ViT, SAM's real 256-wide
   decoder), pretrained by this project on generated scenes with tight boxes and several points
   only, as SAM was (`stablesam_jax/pretrained`, made by `train/configs/demo_pretrain.py`).
2. Freezes it and trains the Stable-SAM plugins (DSP + DRP, about 0.08 M weights) with the
   robust training strategy (RTS: boxes, noisy boxes, 1-10 points, coarse masks, synthetic
   occlusion) for one epoch over freshly generated training scenes, with the project's trainer.
3. Evaluates SAM and Stable-SAM on held-out generated scenes (a scene seed neither training set
   uses) with the paper's protocol: 20 prompts per image for each of GT box, noisy box, 1 point
   and 3 points; mIoU, mBIoU and the stability score mSF (0-100).
4. Writes DIR/results.json ({"sam"|"stable_sam": {prompt type: {"miou", "mbiou", "msf"}}}),
   DIR/results.md (the table), DIR/demo_info.json (settings, timings, DRP weights, the full
   evaluation report) and the figures DIR/masks_sam_vs_stable_sam.png,
   DIR/dsp_sampling_points.png and DIR/drp_alpha.png.

DIR/work holds the run's scratch files (SAM as an Orbax checkpoint, the trainer's workdir with
the trained plugins in DIR/work/train/export/plugins); it is replaced on every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

RESULT_KEYS = {"SAM": "sam", "Stable-SAM": "stable_sam"}
FIGURE_FILES = {
    "masks": "masks_sam_vs_stable_sam.png",
    "sampling": "dsp_sampling_points.png",
    "drp": "drp_alpha.png",
}
# Scene seeds: pretraining uses 1 (train/configs/demo_pretrain.py); the three sets never overlap.
TRAIN_SCENE_SEED = 2
EVAL_SCENE_SEED = 3


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's numbers (stored in demo_info.json)."""

    train_scenes: int = 2048
    batch_size: int = 8
    learning_rate: float = 1e-3
    offset_scale: float = 4.0
    # RTS prompt mixture over prompts.RTS_KINDS (the paper: all kinds; weights are ours).
    mixture: tuple[tuple[str, float], ...] = (
        ("gt_box", 1.0),
        ("noisy_box", 1.0),
        ("one_point", 1.0),
        ("three_points", 1.0),
        ("five_points", 1.0),
        ("ten_points", 1.0),
        ("coarse_mask", 1.0),
    )
    occlusion_prob: float = 0.5
    lsj_range: tuple[float, float] | None = (0.6, 1.4)
    eval_scenes: int = 100
    num_prompts: int = 20
    prompt_types: tuple[str, ...] = ("gt_box", "noisy_box", "one_point", "three_points")
    seed: int = 0
    # The reported numbers use EVAL_SCENE_SEED; choices such as s_p were made on another seed.
    eval_seed: int = EVAL_SCENE_SEED
    figure_examples: int = 3

    @property
    def train_steps(self) -> int:
        return max(1, self.train_scenes // self.batch_size)


FULL = DemoSettings()
QUICK = dataclasses.replace(FULL, train_scenes=16, batch_size=4, eval_scenes=2, figure_examples=2)


def _say(message: str) -> None:
    print(message, flush=True)


def _plugin_config(settings: DemoSettings):
    from ..modeling.plugins import PluginConfig

    return PluginConfig(offset_scale=settings.offset_scale)


def train_config(settings: DemoSettings, sam_checkpoint: str):
    """The trainer config of the demo's Stable-SAM run (RTS, plugins only, one epoch)."""
    from ..training import loop as train_lib

    config = train_lib.default_config()
    config.model_type = "vit_demo"
    config.image_size = 256
    config.with_plugins = True
    config.trainable = "plugins"
    config.sam_checkpoint = sam_checkpoint
    config.plugins.offset_scale = settings.offset_scale
    config.seed = settings.seed
    config.batch_size = settings.batch_size
    config.num_epochs = 1.0
    config.optimizer.learning_rate = settings.learning_rate
    config.data.source = "scenes"
    config.data.num_scenes = settings.train_scenes
    config.data.scene_seed = TRAIN_SCENE_SEED
    config.data.scene_size = 256
    config.data.mixture = dict(settings.mixture)
    config.data.occlusion_prob = settings.occlusion_prob
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


# --------------------------------------------------------------------------------------------------
# Figures


@functools.partial(__import__("jax").jit, static_argnums=(0,))
def _decode_with_intermediates(graphdef, state, features, coords, labels, boxes, box_valid):
    """Single-mask decode of padded prompts on one embedding [1, g, g, C], with intermediates."""
    from flax import nnx

    model = nnx.merge(graphdef, state)
    low_res, _, intermediates = model.decode_padded(
        features,
        coords,
        labels,
        boxes,
        box_valid,
        multimask_output=False,
        return_intermediates=True,
    )
    return low_res[:, 0], intermediates


class _FigureModel:
    """One model's masks and attention for a few prompts on one image."""

    def __init__(self, model, max_points: int):
        from flax import nnx

        from ..utils.transforms import ResizeLongestSide

        self.model = model
        self.max_points = max_points
        self.transform = ResizeLongestSide(model.img_size)
        self.graphdef, self.state = nnx.split(model)

    def run(self, features, input_size, original_size, prompts: list[dict]):
        """-> masks bool [P, H, W], attention [P, g*g] (output token, mean over heads),
        positions [P, g*g, 2] (y, x) in original-image pixels of the features it attends to,
        origins [g*g, 2] the cells' own positions (equal to positions without DSP)."""
        import jax.numpy as jnp

        from ..evaluation.job import PromptBatch

        batch = PromptBatch.from_prompts(prompts, self.max_points)
        coords = self.transform.apply_coords(batch.point_coords, original_size).astype(np.float32)
        boxes = self.transform.apply_boxes(batch.boxes, original_size).astype(np.float32)
        low_res, inter = _decode_with_intermediates(
            self.graphdef,
            self.state,
            features,
            jnp.asarray(coords),
            jnp.asarray(batch.point_labels),
            jnp.asarray(boxes),
            jnp.asarray(batch.box_valid),
        )
        logits = self.model.postprocess_masks(low_res, input_size, original_size)
        masks = np.asarray(logits > self.model.mask_threshold)
        attention = np.asarray(inter["layer1/token_to_image_attn"])[:, :, 1, :].mean(axis=1)
        grid = self.model.config.image_embedding_size
        if "layer1/dsp_positions" in inter:
            cells = np.asarray(inter["layer1/dsp_positions"]).reshape(len(prompts), -1, 2)
        else:
            ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
            cells = np.broadcast_to(
                np.stack([ys, xs], -1).reshape(1, -1, 2), (len(prompts), grid * grid, 2)
            )
        # Cell i's feature sits at the centre of its patch; map input pixels back to the image.
        patch = self.model.img_size / grid
        ratio = np.asarray(original_size, np.float64) / np.asarray(input_size, np.float64)
        positions = (cells + 0.5) * patch * ratio
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        origins = (np.stack([ys, xs], -1).reshape(-1, 2) + 0.5) * patch * ratio
        count = len(prompts)
        return masks[:count], attention[:count], positions[:count], origins


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _drp_scale(model) -> float:
    """DRP's learned scale s (a1 + a2 = s) of the first plugged layer."""
    layer = model.mask_decoder.transformer.layers[min(model.plugin_config.dsp_layers)]
    return float(layer.drp.scale[...])


def make_figures(
    out_dir: Path, sam, stable_sam, settings: DemoSettings, drp_a1: dict[str, float]
) -> dict[str, str]:
    """Writes the three PNGs; returns {kind: path}. Examples are the first evaluation images
    and their first evaluation prompts (the same ones the table scores), not picked by result."""
    from ..data.pipeline import make_eval_source
    from ..data.prompts import eval_prompts, image_seed
    from ..data.scenes import SceneDataset
    from ..evaluation.job import SamEvalPredictor, _max_points
    from . import figures

    source = make_eval_source(SceneDataset(settings.eval_scenes, seed=settings.eval_seed, size=256))
    max_points = _max_points(settings.prompt_types)
    models = {
        "SAM": _FigureModel(sam, max_points),
        "Stable-SAM": _FigureModel(stable_sam, max_points),
    }
    encoder = SamEvalPredictor(sam, max_points=max_points)
    sloppy = [t for t in ("noisy_box", "one_point") if t in settings.prompt_types]
    titles = {"noisy_box": "noisy box", "one_point": "1 point"}

    comparison, sampling = [], []
    for index in range(min(settings.figure_examples, len(source))):
        image, gt, name = source[index]
        embedding = encoder.embed([image])[0]
        features = embedding.features[embedding.index : embedding.index + 1]
        for prompt_type in sloppy:
            prompts = eval_prompts(
                gt, prompt_type, num=settings.num_prompts, seed=image_seed(name, settings.seed)
            )
            outputs = {
                label: model.run(features, embedding.input_size, embedding.original_size, prompts)
                for label, model in models.items()
            }
            sam_masks, stable_masks = outputs["SAM"][0], outputs["Stable-SAM"][0]
            comparison.append(
                {
                    "image": image,
                    "gt": gt,
                    "label": f"{name}\n{titles[prompt_type]}",
                    "prompt": prompts[0],
                    "sam_mask": sam_masks[0],
                    "stable_mask": stable_masks[0],
                    "sam_iou": _iou(sam_masks[0], gt),
                    "stable_iou": _iou(stable_masks[0], gt),
                    "sam_masks": sam_masks,
                    "stable_masks": stable_masks,
                }
            )
            if index == 0:
                for label, (_, attention, positions, origins) in outputs.items():
                    sampling.append(
                        {
                            "image": image,
                            "prompt": prompts[0],
                            "positions": positions[0],
                            "origins": origins if label == "Stable-SAM" else None,
                            "weights": attention[0],
                            "title": label,
                            "row": f"{name}\n{titles[prompt_type]}",
                        }
                    )
    paths = {}
    if comparison:
        figures.mask_comparison(comparison).save(out_dir / FIGURE_FILES["masks"])
        paths["masks"] = str(out_dir / FIGURE_FILES["masks"])
    if sampling:
        figures.sampling_points(sampling, scale=2.0).save(out_dir / FIGURE_FILES["sampling"])
        paths["sampling"] = str(out_dir / FIGURE_FILES["sampling"])
    from ..evaluation.job import PROMPT_TYPE_TITLES

    bars = {PROMPT_TYPE_TITLES.get(t, t): drp_a1[t] for t in settings.prompt_types if t in drp_a1}
    if bars:
        scale = _drp_scale(stable_sam)
        chart = figures.bar_chart(
            bars,
            "Stable-SAM: DRP routing weight a1 on the deformed features",
            y_label=f"mean a1 over the evaluation prompts (a1 + a2 = s = {scale:.3f}, learned)",
            y_max=max(1.0, scale, max(bars.values()) * 1.15),
        )
        chart.save(out_dir / FIGURE_FILES["drp"])
        paths["drp"] = str(out_dir / FIGURE_FILES["drp"])
    return paths


# --------------------------------------------------------------------------------------------------
# The run


def results_json(pooled: dict, prompt_types) -> dict:
    """{"sam"|"stable_sam": {prompt type: {"miou", "mbiou", "msf"}}} from eval's pooled results."""
    return {
        key: {
            t: {m: float(pooled[name][t][m]) for m in ("miou", "mbiou", "msf")}
            for t in prompt_types
        }
        for name, key in RESULT_KEYS.items()
    }


def run(
    out_dir: str | os.PathLike,
    settings: DemoSettings = FULL,
    sam_weights: str | None = None,
    *,
    draw_figures: bool = True,
):
    """Runs the whole demo; returns demo_info (also written to DIR/demo_info.json)."""
    import jax

    from .. import pretrained
    from ..evaluation import job as eval_lib
    from ..evaluation.job import DatasetSpec
    from ..training import loop as train_lib

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)  # a fresh run: the trainer would resume otherwise
    work.mkdir()
    timings: dict[str, float] = {}
    train_lib.configure_logging()
    _say(
        f"Stable-SAM demo on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} CPU cores; output in {out_dir}"
    )

    # 1. The frozen SAM.
    tick = time.perf_counter()
    weights = sam_weights or str(pretrained.DEMO_SAM_FILE)
    if os.path.isdir(weights):
        from ..builder import build_sam

        sam = build_sam(pretrained.DEMO_MODEL_TYPE, weights)
        sam_checkpoint = weights
        sam_meta = {"source": weights}
    else:
        from ..builder import save_sam

        sam = pretrained.build_demo_sam(weights)
        # The trainer reads SAM from a checkpoint directory.
        sam_checkpoint = save_sam(sam, str(work / "sam"))
        sam_meta = pretrained.read_npz(weights)[1]
    timings["load_sam"] = time.perf_counter() - tick
    _say(f"[1/4] SAM: {weights} ({sam.model_type})")

    # 2. Stable-SAM: plugins trained with RTS on the frozen SAM.
    tick = time.perf_counter()
    config = train_config(settings, os.path.abspath(sam_checkpoint))
    _say(
        f"[2/4] training the Stable-SAM plugins with RTS: {settings.train_scenes} generated "
        f"scenes, batch {settings.batch_size}, {settings.train_steps} steps (one epoch), "
        f"lr {settings.learning_rate:g}, offset scale s_p {settings.offset_scale:g}"
    )
    trained = train_lib.train(config, str(work / "train"))
    stable_sam = trained["model"]
    timings["train_plugins"] = time.perf_counter() - tick

    # 3. Evaluation on held-out scenes.
    tick = time.perf_counter()
    _say(
        f"[3/4] evaluating SAM and Stable-SAM on {settings.eval_scenes} held-out scenes, "
        f"{settings.num_prompts} prompts per image and prompt type"
    )
    dataset = DatasetSpec(
        name="scenes", kind="scenes", num=settings.eval_scenes, seed=settings.eval_seed, size=256
    )
    report = eval_lib.evaluate_report(
        {"SAM": sam, "Stable-SAM": stable_sam},
        [dataset],
        settings.prompt_types,
        settings.num_prompts,
        settings.seed,
        keep_per_image=False,
    )
    timings["evaluate"] = time.perf_counter() - tick
    pooled = report["results"][eval_lib.POOLED]
    results = results_json(pooled, settings.prompt_types)
    drp_a1 = {
        t: float(pooled["Stable-SAM"][t]["drp_a1"])
        for t in settings.prompt_types
        if "drp_a1" in pooled["Stable-SAM"][t]
    }
    table = eval_lib.format_table(report)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "results.md").write_text(table)

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
        "num_eval_images": pooled["SAM"][settings.prompt_types[0]]["num_images"],
        "figures": figure_paths,
        "timings_seconds": timings,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "evaluation": report,
    }
    (out_dir / "demo_info.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    _say("")
    _say(table)
    _say(_summary(results, timings))
    return info


def _summary(results: dict, timings: dict) -> str:
    lines = ["Stable-SAM minus SAM (mIoU / mBIoU / mSF points):"]
    for prompt_type in results["sam"]:
        deltas = [
            results["stable_sam"][prompt_type][m] - results["sam"][prompt_type][m]
            for m in ("miou", "mbiou", "msf")
        ]
        lines.append(f"  {prompt_type:13s} " + " / ".join(f"{d:+.1f}" for d in deltas))
    lines.append(
        "time: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items())
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Stable-SAM vs SAM on generated scenes: train the plugins, evaluate, draw.",
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a 1-2 minute smoke run (CI)"
    )
    parser.add_argument(
        "--sam-weights",
        default=None,
        help="SAM weights: a .npz from `stablesam_jax.pretrained.export` or an Orbax 'sam' "
        "checkpoint directory (default: the packaged vit_demo_sam.npz)",
    )
    parser.add_argument("--train-scenes", type=int, help="generated training scenes (one epoch)")
    parser.add_argument("--eval-scenes", type=int, help="held-out evaluation scenes")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--offset-scale", type=float, help="DSP offset scale s_p in cells")
    parser.add_argument("--occlusion-prob", type=float)
    parser.add_argument("--seed", type=int, help="training and prompt seed")
    parser.add_argument(
        "--eval-seed",
        type=int,
        help=f"scene seed of the evaluation set (default {EVAL_SCENE_SEED}; experiments that "
        "choose settings should use another one, e.g. 4)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else FULL
    overrides = {
        field: getattr(args, field)
        for field in (
            "train_scenes",
            "eval_scenes",
            "batch_size",
            "learning_rate",
            "offset_scale",
            "occlusion_prob",
            "seed",
            "eval_seed",
        )
        if getattr(args, field) is not None
    }
    for field in ("train_scenes", "eval_scenes", "batch_size"):
        if field in overrides and overrides[field] < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1")
    settings = dataclasses.replace(settings, **overrides)
    try:
        run(args.out, settings, args.sam_weights, draw_figures=not args.no_figures)
    except FileNotFoundError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
