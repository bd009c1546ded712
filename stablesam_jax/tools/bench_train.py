"""The training step's benchmark: the Trainer's jitted, sharded step
(`training.trainer.jit_train_step`) on a synthetic batch, compiled ahead of time so compile time
and XLA's memory plan are measured apart from the steps.

The synthetic batch has the pipeline's fields and shapes (`training.DEVICE_FIELDS`) and mixes the
prompt kinds (box, points, coarse mask), so the step runs the same program as on real data: its
shapes, not its values, set the speed. `python train/bench_train.py` measures the real loop with
its input pipeline instead.
"""

from __future__ import annotations

import statistics
import time

import jax
import ml_collections
import numpy as np

from ..constants import PAD_LABEL
from ..data.pipeline import MAX_POINTS
from ..data.prompts import COARSE_MASK_LOGIT, RTS_KINDS
from ..modeling.sam import SAM_VARIANTS
from ..training.trainer import Trainer, jit_train_step
from .bench import Context, ms_stats, peak_memory_bytes, program_memory

# The prompt kinds the synthetic batch cycles through.
_KINDS = ("gt_box", "three_points", "coarse_mask")


def synthetic_batch(model_type: str, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A training batch (numpy) for `model_type`: random pixels, one rectangular object per
    example, prompted by its box, three points inside it or its coarse mask, in turn."""
    config = SAM_VARIANTS[model_type]
    size, low_res = config.img_size, 4 * config.image_embedding_size
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
        "mask": np.zeros((batch_size, size, size), bool),
        "box": np.zeros((batch_size, 4), np.float32),
        "box_valid": np.zeros(batch_size, bool),
        "point_coords": np.zeros((batch_size, MAX_POINTS, 2), np.float32),
        "point_labels": np.full((batch_size, MAX_POINTS), PAD_LABEL, np.int32),
        "mask_input": np.full((batch_size, low_res, low_res), -COARSE_MASK_LOGIT, np.float32),
        "mask_valid": np.zeros(batch_size, bool),
        "kind": np.zeros(batch_size, np.int32),
        "num_corrupt_skipped": np.zeros(batch_size, np.int32),
    }
    for i in range(batch_size):
        x0, y0 = rng.integers(0, size // 2, 2)
        x1, y1 = x0 + rng.integers(size // 8, size // 2, 2)
        batch["mask"][i, y0:y1, x0:x1] = True
        kind = _KINDS[i % len(_KINDS)]
        batch["kind"][i] = RTS_KINDS.index(kind)
        if kind == "gt_box":
            batch["box"][i] = (x0, y0, x1 - 1, y1 - 1)
            batch["box_valid"][i] = True
        elif kind == "three_points":
            batch["point_coords"][i, :3] = rng.uniform((x0, y0), (x1, y1), (3, 2))
            batch["point_labels"][i, :3] = 1
        else:
            scale = low_res / size
            lo, hi = int(y0 * scale), int(np.ceil(y1 * scale))
            batch["mask_input"][i, lo:hi, int(x0 * scale) : int(np.ceil(x1 * scale))] = (
                COARSE_MASK_LOGIT
            )
            batch["mask_valid"][i] = True
    return batch


def bench_train_step(ctx: Context, config: ml_collections.ConfigDict, steps: int) -> dict:
    """`steps` timed training steps of `config` (model, subset, dtype, global batch) on every
    device, after `ctx.settings.warmup` untimed ones."""
    start = time.perf_counter()
    trainer = Trainer(config)
    build_s = time.perf_counter() - start
    batch = trainer.put_batch(synthetic_batch(config.model_type, config.batch_size, config.seed))
    start = time.perf_counter()
    compiled = (
        jit_train_step(trainer.mesh)
        .lower(
            trainer.model_def,
            trainer.state,
            trainer.frozen,
            batch,
            trainer.optimizer,
            trainer.schedule,
            trainer.settings,
        )
        .compile()
    )
    compile_s = time.perf_counter() - start
    state, metrics = trainer.state, {}

    def step() -> float:
        nonlocal state, metrics
        start = time.perf_counter()
        state, metrics = compiled(state, trainer.frozen, batch)  # the old state is donated
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    for _ in range(ctx.settings.warmup):
        step()
    times = [step() for _ in range(steps)]
    trainer.state = state
    median = statistics.median(times)
    record = {
        "bench": "train_step",
        "impl": "jax",
        "model_type": config.model_type,
        "trainable": config.trainable,
        "num_trainable": trainer.num_trainable,
        "global_batch": config.batch_size,
        "per_device_batch": config.batch_size // jax.device_count(),
        "dtype": config.dtype,
        "attention_impl": config.attention_impl,
        "loss_sampling": config.loss.sampling,
        "images_per_s": round(config.batch_size / median, 3),
        **ms_stats(times),
        "compile_s": round(compile_s, 2),
        "build_s": round(build_s, 2),
        "loss": float(metrics["loss"]),
        "peak_memory_bytes": peak_memory_bytes(ctx.device),
        **program_memory(compiled),
        "steps": steps,
        "warmup": ctx.settings.warmup,
    }
    ctx.emit(record)
    return record
