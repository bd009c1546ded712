r"""One device check for the README's GPU table, in one process and one call.

    bash bench/device_check.sh [DIR]       # on the GPU machine: wheels, PYTHONPATH, the command
    python -m stablesam_jax.commands.device_check --out DIR [--dry-run] [--stages ...]

Stages, in this order (each one's records are written as soon as it ends, so a run cut short
keeps what it measured; a stage that fails is recorded and the next one runs):

  fast_check  the fast path (bf16, attention_impl="fast", scan_blocks) against the fp32
              reference on the device: vit_b, one generated image, box and click prompts;
              embeddings, low-res logits, IoU predictions, pixel agreement of the masks
  encoder     vit_b / vit_l / vit_h, bf16, batch 8 (`tools.bench.run`), each next to the
              official PyTorch SAM (`tools.bench_torch`) on the same device
  decoder     1 / 16 / 64 / 256 box prompts on one embedding, SAM and Stable-SAM, and the
              official decoder
  train       the `plugins` train step of vit_l at the paper's per-device batch (global batch 32
              over 8 GPUs: 4 per device), `training.paper_config` otherwise
              (`tools.bench_train`)

Each record carries compile time, XLA's memory plan of its program (`program_*_bytes`) and the
allocator's peak so far (`device.memory_stats()`, where the backend has one). Output in DIR:
`device_check.json` (every record, the plan, the stages' status) and `device_check.md` (the
table, also printed). About 4-6 minutes on one H100-class GPU by our estimate; stages that would
start after `budget_s` are skipped and marked so.

`--dry-run` runs the same code end to end on the CPU with tiny sizes (vit_t, 1 timed
iteration); CI runs it. The GPU path has only been run as this dry run: no GPU was available
where this script was written, so its numbers, timings and memory on a GPU are untested.

What the import path needs beyond jax, jaxlib, flax, optax, orbax-checkpoint (and their
dependencies), torch and timm (which brings pillow through torchvision): the training package
imports the Grain data pipeline and ml_collections, the predictor pillow, the PyTorch comparison
the official `segment-anything`. Wheels for a machine without a package registry (Python 3.12,
x86_64), downloaded elsewhere into `.whl/` of the working tree and installed by
bench/device_check.sh (bench/README.md says why these and no more):

    for spec in grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0 \
        ml-collections==1.1.0 pillow==13.0.0 segment-anything==1.0; do
      pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_27_x86_64 -d .whl "$spec"
    done

With exactly these wheels over jax 0.11.2, flax 0.12.12, optax and orbax-checkpoint on Python
3.12 (no torch), the dry run passes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
import traceback

import jax
import numpy as np

from ..data.prompts import mask_to_box
from ..data.scenes import generate_scene
from ..predictor import SamPredictor
from ..training.config import paper_config
from ..utils.io import atomic_write
from . import bench, bench_train
from .device_table import markdown_table

JSON_FILE = "device_check.json"
MARKDOWN_FILE = "device_check.md"
STAGES = ("fast_check", "encoder", "decoder", "train")
# The paper recipe's devices (train/configs/stable_sam_vit_l.py: one host with 8 GPUs).
PAPER_DEVICES = 8
# Agreement the CPU test asks of vit_t (tests/modeling/test_fast_path.py); vit_b is deeper, so
# these are a yardstick, not a pass mark.
VIT_T_TOLERANCES = {"embedding": 0.02, "logits": 0.04, "iou": 0.02, "agreement": 0.995}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures."""

    encoder_models: tuple[str, ...] = ("vit_b", "vit_l", "vit_h")
    batch: int = 8
    dtype: str = "bfloat16"
    decoder_model: str = "vit_b"  # the decoder is the same for every SAM size
    prompts: tuple[int, ...] = bench.DEFAULT_PROMPT_COUNTS
    check_model: str = "vit_b"
    check_image_size: int = 768
    check_prompts: int = 4  # boxes, and as many single clicks
    train_model: str = "vit_l"
    train_per_device_batch: int | None = None  # None: paper_config's batch over PAPER_DEVICES
    train_steps: int = 10
    warmup: int = 3
    iters: int = 10
    compare_torch: bool = True
    budget_s: float = 390.0
    seed: int = 0


DRY_RUN = Plan(
    encoder_models=("vit_t",),
    batch=2,
    decoder_model="vit_t",
    prompts=(2,),
    check_model="vit_t",
    check_image_size=160,
    check_prompts=2,
    train_model="vit_t",
    train_per_device_batch=2,
    train_steps=1,
    warmup=1,
    iters=1,
)


def bench_settings(plan: Plan) -> bench.BenchSettings:
    return bench.BenchSettings(
        model_type=plan.encoder_models[0],
        batch=plan.batch,
        dtype=plan.dtype,
        attention_impl="fast",
        scan_blocks=True,
        warmup=plan.warmup,
        iters=plan.iters,
        prompts=plan.prompts,
        seed=plan.seed,
    )


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "segment_anything"))


# ----------------------------------------------------------------------------- stages


def _rel(reference: np.ndarray, other: np.ndarray) -> float:
    reference, other = np.asarray(reference, np.float32), np.asarray(other, np.float32)
    return float(np.abs(reference - other).max() / max(float(np.abs(reference).max()), 1e-12))


def _mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    union = (a | b).sum((-2, -1))
    return np.where(union > 0, (a & b).sum((-2, -1)) / np.maximum(union, 1), 1.0)


def _prompts(plan: Plan) -> tuple[np.ndarray, dict, dict]:
    """(image, box prompts, click prompts) of one generated scene."""
    # Twice the objects asked for: a scene keeps between half and all of them.
    scene = generate_scene(
        plan.seed, size=plan.check_image_size, max_objects=2 * plan.check_prompts
    )
    masks = scene["masks"][: plan.check_prompts]
    rng = np.random.default_rng(plan.seed)
    clicks = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        i = rng.integers(len(ys))
        clicks.append([[xs[i] + 0.5, ys[i] + 0.5]])
    boxes = {"boxes": np.stack([mask_to_box(m) for m in masks])}
    points = {
        "point_coords": np.asarray(clicks, np.float32),
        "point_labels": np.ones((len(masks), 1), np.int32),
    }
    return scene["image"], boxes, points


def fast_path_check(ctx: bench.Context, plan: Plan) -> dict:
    """The fast path against the fp32 reference path: same weights, same image and prompts."""
    reference_settings = dataclasses.replace(
        ctx.settings, dtype="float32", attention_impl="reference", scan_blocks=False
    )
    predictors = {
        "reference": SamPredictor(
            bench.build_model(reference_settings, plugins=False, model_type=plan.check_model)
        ),
        "fast": SamPredictor(
            bench.build_model(ctx.settings, plugins=False, model_type=plan.check_model)
        ),
    }
    image, boxes, points = _prompts(plan)
    record: dict = {"bench": "fast_check", "impl": "jax", "model_type": plan.check_model}
    outputs = {}
    for name, predictor in predictors.items():
        first, again = bench.timed(
            lambda p=predictor: (p.set_image(image), jax.block_until_ready(p.features)), 2
        )
        record[f"{name}_set_image_first_s"] = round(first, 2)
        record[f"{name}_set_image_ms"] = round(1e3 * again, 1)
        outputs[name] = [predictor.predict_batch(**p, return_logits=True) for p in (boxes, points)]
    ref, fast = outputs["reference"], outputs["fast"]
    threshold = predictors["reference"].model.mask_threshold
    ref_masks = np.concatenate([m for m, _, _ in ref]) > threshold
    fast_masks = np.concatenate([m for m, _, _ in fast]) > threshold
    record.update(
        {
            "image_hw": list(image.shape[:2]),
            "prompts": {"boxes": len(boxes["boxes"]), "clicks": len(points["point_coords"])},
            "embedding_max_rel_diff": _rel(
                predictors["reference"].features, predictors["fast"].features
            ),
            "logits_max_rel_diff": max(_rel(r[2], f[2]) for r, f in zip(ref, fast)),
            "iou_max_abs_diff": max(float(np.abs(r[1] - f[1]).max()) for r, f in zip(ref, fast)),
            "mask_pixel_agreement": float((ref_masks == fast_masks).mean()),
            "mask_iou_min": float(_mask_ious(ref_masks, fast_masks).min()),
            "vit_t_tolerances": VIT_T_TOLERANCES,
            "peak_memory_bytes": bench.peak_memory_bytes(ctx.device),
        }
    )
    ctx.emit(record)
    return record


def train_config(plan: Plan):
    """paper_config with the plan's model and dtype, at the paper's per-device batch on every
    device here."""
    config = paper_config()
    per_device = plan.train_per_device_batch or config.batch_size // PAPER_DEVICES
    config.model_type = plan.train_model
    config.dtype = plan.dtype
    config.batch_size = per_device * jax.device_count()
    config.seed = plan.seed
    return config


def _run_stage(stage: str, ctx: bench.Context, plan: Plan, compare_torch: bool) -> None:
    if stage == "fast_check":
        fast_path_check(ctx, plan)
    elif stage == "encoder":
        for model_type in plan.encoder_models:
            bench.run(ctx, parts=("encoder",), compare_torch=compare_torch, model_type=model_type)
    elif stage == "decoder":
        bench.run(
            ctx,
            parts=("decoder",),
            plugins=True,
            compare_torch=compare_torch,
            model_type=plan.decoder_model,
        )
    elif stage == "train":
        bench_train.bench_train_step(ctx, train_config(plan), plan.train_steps)
    else:
        raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")


# ----------------------------------------------------------------------------- the run


def output_paths(out_dir: str, *, force: bool = False) -> tuple[str, str]:
    """(json path, markdown path) in out_dir; refuses to overwrite an earlier run's files."""
    paths = tuple(os.path.join(out_dir, name) for name in (JSON_FILE, MARKDOWN_FILE))
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        raise FileExistsError(
            f"{existing} exist from an earlier run: pass another --out directory, or --force"
        )
    return paths[0], paths[1]


def run(
    plan: Plan,
    out_dir: str,
    *,
    stages: tuple[str, ...] = STAGES,
    command: str = "",
    force: bool = False,
    dry_run: bool = False,
) -> dict:
    """Runs the stages, writing JSON and Markdown into out_dir after each; returns the results."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {STAGES}")
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = output_paths(out_dir, force=force)
    ctx = bench.Context(bench_settings(plan), command)
    compare_torch = plan.compare_torch and torch_available()
    results: dict = {
        "dry_run": dry_run,
        "plan": dataclasses.asdict(plan),
        "environment": dict(ctx.common),
        "torch": None if not compare_torch else _torch_version(),
        "torch_skipped": None if compare_torch else _why_no_torch(plan),
        "stages": [],
        "records": ctx.records,
    }
    start = time.perf_counter()
    for stage in stages:
        elapsed = time.perf_counter() - start
        status: dict = {"stage": stage, "status": "ok"}
        if elapsed > plan.budget_s:
            status.update(status="skipped", reason=f"{elapsed:.0f} s > budget {plan.budget_s} s")
        else:
            try:
                _run_stage(stage, ctx, plan, compare_torch)
            except Exception as error:  # noqa: BLE001 - recorded; the next stage still runs
                status.update(status="error", error=repr(error)[:2000])
                status["traceback"] = traceback.format_exc()[-4000:]
            status["seconds"] = round(time.perf_counter() - start - elapsed, 1)
        results["stages"].append(status)
        results["elapsed_s"] = round(time.perf_counter() - start, 1)
        results["peak_memory_bytes"] = bench.peak_memory_bytes(ctx.device)
        _write(results, json_path, md_path)
    return results


def _write(results: dict, json_path: str, md_path: str) -> None:
    atomic_write(json_path, json.dumps(results, indent=1, default=str))
    atomic_write(md_path, markdown_table(results))


def _torch_version() -> str:
    import torch  # optional; only asked once torch_available() said it is there

    return torch.__version__


def _why_no_torch(plan: Plan) -> str:
    if not plan.compare_torch:
        return "not asked for (--no-torch)"
    return "torch or segment-anything is not installed"
