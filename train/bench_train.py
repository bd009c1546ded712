r"""Training throughput benchmark: images/s of the real training loop and the share of its time
spent waiting for input, plus the two ceilings (the step alone on one cached batch, the input
pipeline alone). Prints one JSON object per line.

  python train/bench_train.py --config train/configs/tiny.py --steps 30
  python train/bench_train.py --config train/configs/stable_sam_vit_l.py \
      --config.data.source=scenes --config.data.scene_size=1024 --steps 50

Same loop as `stablesam_jax.train_lib.train` (step t is dispatched, then step t-1's metrics are
read, so input for t+1 is prepared while t computes), without checkpoints or logging.
"input_wait_fraction" is the time spent in `next(iterator)` + host-to-device assembly over the
wall time of the measured steps: near 0 means the accelerator is the bottleneck, near 1 that the
data pipeline is (raise config.data.num_workers / read_threads).
"""

from __future__ import annotations

import json
import platform
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_STEPS = flags.DEFINE_integer("steps", 30, "Measured steps of the training loop.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Unmeasured steps first (compilation).")
_WINDOW = flags.DEFINE_integer("window", 10, "Steps per reported window.")
_CEILINGS = flags.DEFINE_bool("ceilings", True, "Also time the step alone and the input alone.")
flags.mark_flags_as_required(["config"])


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main(argv) -> None:
    del argv
    import jax

    from stablesam_jax.training import loop as train_lib

    config = _CONFIG.value
    train_lib.initialize_distributed(config, auto_detect=True)
    train_lib.validate_config(config)
    batch = config.batch_size
    tick = time.perf_counter()
    source = train_lib.make_source(config)
    trainer = train_lib.Trainer(config, epoch_steps=train_lib.steps_per_epoch(config, len(source)))
    iterator = iter(train_lib.make_dataset(config, source))
    build_seconds = time.perf_counter() - tick
    common = {
        "model_type": config.model_type,
        "trainable": config.trainable,
        "global_batch": batch,
        "dtype": config.dtype,
        "loss_sampling": config.loss.sampling,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "processes": jax.process_count(),
        "data_workers": config.data.num_workers,
    }
    is_main = jax.process_index() == 0

    tick = time.perf_counter()
    for _ in range(_WARMUP.value):
        metrics = trainer.step(trainer.put_batch(next(iterator)))
    jax.block_until_ready(metrics)
    if is_main:
        _emit(
            {
                "event": "warmup",
                **common,
                "build_seconds": round(build_seconds, 2),
                "warmup_steps": _WARMUP.value,
                "warmup_seconds": round(time.perf_counter() - tick, 2),
            }
        )

    total_wait = total_wall = 0.0
    window_wait = window_wall = 0.0
    window_steps = 0
    previous = None
    start = tick = time.perf_counter()
    for step in range(1, _STEPS.value + 1):
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
        if window_steps == _WINDOW.value or step == _STEPS.value:
            if step == _STEPS.value:
                jax.block_until_ready(previous)
                window_wall += time.perf_counter() - tick
            if is_main:
                _emit(
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
    summary = {
        "event": "summary",
        **common,
        "steps": _STEPS.value,
        "images_per_second": round(_STEPS.value * batch / elapsed, 3),
        "seconds_per_step": round(elapsed / _STEPS.value, 4),
        "input_wait_fraction": round(total_wait / total_wall, 4),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }

    if _CEILINGS.value:
        # The step alone: one batch reused, no input work at all.
        device_batch = trainer.put_batch(next(iterator))
        jax.block_until_ready(trainer.step(device_batch))
        tick = time.perf_counter()
        for _ in range(_STEPS.value):
            metrics = trainer.step(device_batch)
        jax.block_until_ready(metrics)
        summary["step_only_images_per_second"] = round(
            _STEPS.value * batch / (time.perf_counter() - tick), 3
        )
        # The input alone (this process's share of the global batch).
        tick = time.perf_counter()
        for _ in range(_STEPS.value):
            next(iterator)
        local = batch // jax.process_count()
        summary["input_only_images_per_second_per_process"] = round(
            _STEPS.value * local / (time.perf_counter() - tick), 3
        )
    if is_main:
        _emit(summary)


if __name__ == "__main__":
    app.run(main)
