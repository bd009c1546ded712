r"""Training throughput benchmark: images/s of the real training loop and the share of its time
spent waiting for input, plus the two ceilings (the step alone on one cached batch, the input
pipeline alone). Prints one JSON object per line.

  python train/bench_train.py --config train/configs/tiny.py --steps 30
  python train/bench_train.py --config train/configs/stable_sam_vit_l.py \
      --config.data.source=scenes --config.data.scene_size=1024 --steps 50

Same loop as `stablesam_jax.training.train` (step t is dispatched, then step t-1's metrics are
read, so input for t+1 is prepared while t computes), without checkpoints or logging.
"input_wait_fraction" is the time spent in `next(iterator)` + host-to-device assembly over the
wall time of the measured steps: near 0 means the accelerator is the bottleneck, near 1 that the
data pipeline is (raise config.data.num_workers / read_threads).
"""

from __future__ import annotations

import json
import platform
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from stablesam_jax import training

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_STEPS = flags.DEFINE_integer("steps", 30, "Measured steps of the training loop.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Unmeasured steps first (compilation).")
_WINDOW = flags.DEFINE_integer("window", 10, "Steps per reported window.")
_CEILINGS = flags.DEFINE_bool("ceilings", True, "Also time the step alone and the input alone.")
flags.mark_flags_as_required(["config"])


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _common(config) -> dict:
    return {
        "model_type": config.model_type,
        "trainable": config.trainable,
        "global_batch": config.batch_size,
        "dtype": config.dtype,
        "loss_sampling": config.loss.sampling,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "processes": jax.process_count(),
        "data_workers": config.data.num_workers,
    }


def _measure(trainer, iterator, steps: int, window: int, emit) -> dict:
    """The loop as `training.train` runs it; emits a record per window of steps, returns the
    summary's timing fields."""
    batch = trainer.config.batch_size
    total_wait = total_wall = 0.0
    window_wait = window_wall = 0.0
    window_steps = 0
    previous = None
    start = tick = time.perf_counter()
    for step in range(1, steps + 1):
        wait_start = time.perf_counter()
        device_batch = trainer.put_batch(next(iterator))
        wait = time.perf_counter() - wait_start
        metrics = trainer.step(device_batch)
        if previous is not None:
            jax.block_until_ready(previous)
        previous = metrics
        now = time.perf_counter()
        window_wall += now - tick
        window_wait += wait
        window_steps += 1
        tick = now
        if window_steps == window or step == steps:
            if step == steps:
                jax.block_until_ready(previous)
                window_wall += time.perf_counter() - tick
            emit(
                {
                    "event": "window",
                    "last_step": step,
                    "images_per_second": round(window_steps * batch / window_wall, 3),
                    "input_wait_fraction": round(window_wait / window_wall, 4),
                    "loss": float(previous["loss"]),
                }
            )
            total_wall += window_wall
            total_wait += window_wait
            window_wall = window_wait = 0.0
            window_steps = 0
    elapsed = time.perf_counter() - start
    return {
        "steps": steps,
        "images_per_second": round(steps * batch / elapsed, 3),
        "seconds_per_step": round(elapsed / steps, 4),
        "input_wait_fraction": round(total_wait / total_wall, 4),
    }


def _ceilings(trainer, iterator, steps: int) -> dict:
    batch = trainer.config.batch_size
    # The step alone: one batch reused, no input work at all.
    device_batch = trainer.put_batch(next(iterator))
    jax.block_until_ready(trainer.step(device_batch))
    tick = time.perf_counter()
    for _ in range(steps):
        metrics = trainer.step(device_batch)
    jax.block_until_ready(metrics)
    step_only = round(steps * batch / (time.perf_counter() - tick), 3)
    # The input alone (this process's share of the global batch).
    tick = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    local = batch // jax.process_count()
    return {
        "step_only_images_per_second": step_only,
        "input_only_images_per_second_per_process": round(
            steps * local / (time.perf_counter() - tick), 3
        ),
    }


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    training.initialize_distributed(config, auto_detect=True)
    training.validate_config(config)
    tick = time.perf_counter()
    source = training.make_source(config)
    trainer = training.Trainer(config, epoch_steps=training.steps_per_epoch(config, len(source)))
    iterator = iter(training.make_dataset(config, source))
    build_seconds = time.perf_counter() - tick
    common = _common(config)
    is_main = jax.process_index() == 0
    emit = _emit if is_main else (lambda record: None)

    tick = time.perf_counter()
    for _ in range(_WARMUP.value):
        metrics = trainer.step(trainer.put_batch(next(iterator)))
    jax.block_until_ready(metrics)
    emit(
        {
            "event": "warmup",
            **common,
            "build_seconds": round(build_seconds, 2),
            "warmup_steps": _WARMUP.value,
            "warmup_seconds": round(time.perf_counter() - tick, 2),
        }
    )
    summary = {
        "event": "summary",
        **common,
        **_measure(trainer, iterator, _STEPS.value, _WINDOW.value, emit),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }
    if _CEILINGS.value:
        summary.update(_ceilings(trainer, iterator, _STEPS.value))
    emit(summary)


if __name__ == "__main__":
    app.run(main)
