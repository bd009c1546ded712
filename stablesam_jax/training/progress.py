"""What a training run reports: the per-step metrics file, throughput, log lines and TensorBoard
scalars, and the setup it logs at the start."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import platform
from typing import Any

import jax

from .trainer import Trainer

logger = logging.getLogger("stablesam_jax.train")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash: everything after it is unreliable
    return rows


def truncate_metrics(path: str, last_step: int) -> None:
    """Keeps the per-step records up to the restored step; later ones are recomputed."""
    rows = [row for row in read_jsonl(path) if row["step"] <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


@dataclasses.dataclass
class Throughput:
    images: int = 0
    seconds: float = 0.0
    input_seconds: float = 0.0

    def add(self, images: int, seconds: float, input_seconds: float) -> None:
        self.images += images
        self.seconds += seconds
        self.input_seconds += input_seconds

    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def wait_fraction(self) -> float:
        return self.input_seconds / self.seconds if self.seconds else float("nan")


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _routing_text(values: dict) -> str:
    """DRP's mean routing weights for the progress line ("" without a DRP)."""
    if "drp_a1" not in values:
        return ""
    a2 = f" a2 {values['drp_a2']:.3f}" if "drp_a2" in values else ""
    return f"  a1 {values['drp_a1']:.3f}{a2}"


class Progress:
    """Per-step bookkeeping on the host: the metrics file (process 0), throughput (the first step
    is left out: it includes compilation), and a log line + TensorBoard scalars every
    `log_every_steps` steps and at the last."""

    def __init__(self, config, metrics_path: str, writer, *, start_step: int, num_steps: int):
        self.batch_size = config.batch_size
        self.log_every = config.log_every_steps
        self.start_step, self.num_steps = start_step, num_steps
        self.is_main = jax.process_index() == 0
        self.writer = writer
        self.file = open(metrics_path, "a") if self.is_main else None  # noqa: SIM115
        self.total = Throughput()
        self.window = Throughput()
        self.last: dict = {}

    def add(self, step: int, values: dict, step_seconds: float, input_seconds: float) -> None:
        self.last = values
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()
        if step > self.start_step + 1:
            for t in (self.total, self.window):
                t.add(self.batch_size, step_seconds, input_seconds)
        if self.is_main and (step % self.log_every == 0 or step == self.num_steps):
            self._log(step, values)

    def _log(self, step: int, values: dict) -> None:
        rate = self.window.rate() if self.window.seconds > 0 else self.total.rate()
        eta = (self.num_steps - step) * self.batch_size / rate if rate > 0 else float("nan")
        wait = self.window.wait_fraction()
        corrupt = values["num_corrupt_skipped"]
        logger.info(
            "step %d/%d  loss %.4f (bce %.4f, dice %.4f)  iou %.3f%s  grad %.3g  "
            "%.2f img/s  input wait %.0f%%  ETA %s%s",
            step,
            self.num_steps,
            values["loss"],
            values["bce"],
            values["dice"],
            values["train_iou"],
            _routing_text(values),
            values["grad_norm"],
            rate,
            100 * wait,
            format_seconds(eta),
            f"  corrupt skipped {int(corrupt)}" if corrupt else "",
        )
        self.writer.write_scalars(
            step, {**values, "images_per_second": rate, "input_wait_fraction": wait}
        )
        self.window = Throughput()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.writer.close()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = value
    return out


def log_start(
    config, workdir: str, trainer: Trainer, writer, *, records, epoch_steps, num_steps, resumed_from
) -> None:
    """Process 0: config.json, and the run's setup in the log and in TensorBoard's hparams."""
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    logger.info("config:\n%s", config)
    logger.info("versions: %s", json.dumps(versions()))
    logger.info(
        "devices: %d (%s) over %d process(es); global batch %d, %d per device",
        jax.device_count(),
        jax.devices()[0].device_kind,
        jax.process_count(),
        config.batch_size,
        config.batch_size // jax.device_count(),
    )
    logger.info(
        "parameters: %s total, %s trainable (%s), %s frozen",
        f"{trainer.num_total:,}",
        f"{trainer.num_trainable:,}",
        config.trainable,
        f"{trainer.num_total - trainer.num_trainable:,}",
    )
    logger.info(
        "data: %d records, %d steps per epoch, %d steps; %s",
        records,
        epoch_steps,
        num_steps,
        f"resuming from step {resumed_from}" if resumed_from is not None else "fresh start",
    )
    writer.write_hparams(
        {
            k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in flatten_config(config.to_dict()).items()
        }
    )
