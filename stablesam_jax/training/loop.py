"""The training loop: Stable-SAM's robust training strategy (RTS), the DT-SAM / PT-SAM baselines,
and SAM pretraining from scratch (for the demo), data-parallel over devices and hosts, resumable.

The step is `step.train_step`, compiled by the `trainer.Trainer`; this module runs it over the
data stream, checks and logs its metrics, checkpoints, exports and resumes.

A workdir holds: `checkpoints/` (Orbax CheckpointManager; per step: `state` = trainable weights,
optimizer state, step and RNG; `data` = every process's data-iterator state; `meta` = the run
identity, the config and a sha256 digest of every array of `state`, checked on resume), `export/` (the trained weights in the form `build_stable_sam(...,
plugins=...)` / `build_sam(..., checkpoint=...)` read), `tensorboard/`, `train_metrics.jsonl`
(one line per step) and `config.json`. Starting on a workdir that has checkpoints resumes from the
latest (see `train`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ..checkpoint import CheckpointError, read_error, restore_item, verify_digests
from ..utils.digest import DIGEST_ALGORITHM, array_digests
from .config import ConfigError, validate_config
from .data import make_dataset, make_source, steps_per_epoch, total_steps
from .distributed import initialize_distributed, local_copy, on_process_zero, sync
from .metric_writer import make_metric_writer
from .optim import optimizer_kind
from .progress import Progress, log_start, truncate_metrics
from .trainer import Trainer, export, export_kind

logger = logging.getLogger("stablesam_jax.train")

METRICS_FILE = "train_metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; nothing after the last good step was saved."""


def configure_logging() -> None:
    """Progress lines to stdout (absl keeps its own handler on stderr when it runs the CLI)."""
    if not any(getattr(h, "_stablesam", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._stablesam = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# ------------------------------------------------------------------------------------------------
# Checkpoints and resuming
# ------------------------------------------------------------------------------------------------


def _checkpoint_manager(directory: str, config) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints,
        create=True,
        enable_async_checkpointing=config.async_checkpointing,
    )
    return ocp.CheckpointManager(directory, options=options)


def _run_identity(config) -> dict:
    # What a resumed run must share with the run that wrote the checkpoint.
    return {
        "model_type": config.model_type,
        "trainable": config.trainable,
        "with_plugins": config.with_plugins,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "process_count": jax.process_count(),
        "optimizer": optimizer_kind(config.optimizer),
    }


def _resume_data(manager, config, identity: dict, iterator, workdir: str) -> int | None:
    """The step to resume from (None: a fresh start), after checking the stored run identity and
    restoring the data-iterator state into `iterator`."""
    resumed_from = manager.latest_step()
    if resumed_from is None:
        return None
    if not config.resume:
        raise ConfigError(
            f"{workdir} already holds checkpoints (latest step {resumed_from}) and "
            "config.resume=False: use a new workdir, or resume"
        )
    stored = manager.restore(resumed_from, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    stored_identity = stored["meta"]["identity"]
    changed = {
        k: (stored_identity.get(k), v) for k, v in identity.items() if stored_identity.get(k) != v
    }
    if changed:
        raise ConfigError(
            f"{workdir} holds a run with different settings {changed} (stored, now): "
            "use a new workdir, or restore those settings to resume"
        )
    manager.restore(
        resumed_from, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator))
    )
    return resumed_from


def _host_state(state: dict) -> dict[str, np.ndarray]:
    """Every leaf of the train state (weights, optimizer state, step, RNG) on the host, by path:
    what the digests saved with a checkpoint cover."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(local_copy(leaf)) for path, leaf in leaves}


def _resume_state(manager, trainer: Trainer, resumed_from: int) -> None:
    """Restores the train state, every array checked against the digest saved with it; on a
    damaged checkpoint raises CheckpointError and leaves the trainer's state as it was."""
    step_dir = os.path.join(os.fspath(manager.directory), str(resumed_from))
    advice = f"Delete {step_dir} to resume from the checkpoint before it, or use a new workdir."
    meta = manager.restore(resumed_from, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    try:
        # Not manager.restore: this reader leaves no read pending when one fails, so a damaged
        # file gives one error instead of Orbax's "Event loop is closed" tracebacks.
        state = restore_item(step_dir, "state", trainer.abstract_state())
    except Exception as e:  # noqa: BLE001 - tensorstore raises several types
        raise CheckpointError(
            f"{step_dir}: the train state could not be read ({read_error(e)}); the checkpoint "
            "is damaged. " + advice
        ) from e
    verify_digests(_host_state(state), meta["meta"].get("state_digests"), step_dir, advice)
    trainer.state = state
    restored_step = int(local_copy(trainer.state["step"]))
    if restored_step != resumed_from:
        raise ValueError(f"checkpoint {resumed_from} holds step {restored_step}")


@dataclasses.dataclass
class _Saver:
    """Writes checkpoints (train state, data-iterator state, run identity) and the export."""

    manager: ocp.CheckpointManager
    directory: str  # the manager's, as the error messages name it
    trainer: Trainer
    iterator: Any
    identity: dict
    export_dir: str
    last_saved: int | None

    def save(self, step: int, *, final: bool) -> None:
        config = self.trainer.config
        # In the same step directory as the state, so Orbax commits both or neither.
        meta = {
            "identity": self.identity,
            "config": config.to_dict(),
            "digest_algorithm": DIGEST_ALGORITHM,
            "state_digests": array_digests(_host_state(self.trainer.state)),
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(self.trainer.state),
                data=grain.checkpoint.CheckpointSave(self.iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.last_saved = step
        if config.export_on_save or final:
            export(self.trainer, self.export_dir)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def _non_finite_message(step: int, metrics: dict, last_saved: int | None, ckpt_dir: str) -> str:
    saved = (
        f"The last good checkpoint is step {last_saved} in {ckpt_dir}; restarting on this workdir "
        "resumes from it."
        if last_saved is not None
        else "No checkpoint was written yet."
    )
    return (
        f"non-finite training loss at step {step} (loss={metrics['loss']}, "
        f"grad_norm={metrics['grad_norm']}); stopping without saving the bad state. {saved} "
        "What to try: a lower learning rate (config.optimizer.learning_rate), gradient clipping "
        "(config.optimizer.grad_clip_norm), float32 compute (config.dtype='float32'), and check the "
        "data for empty or broken masks."
    )


def _record(pending: tuple, progress: Progress, saver: _Saver) -> None:
    """Fetches one step's metrics (the host waits for that step here), stops on a non-finite
    loss or gradient norm, and hands them to `progress`."""
    step, device_metrics, step_seconds, input_seconds = pending
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
        message = _non_finite_message(step, values, saver.last_saved, saver.directory)
        saver.manager.wait_until_finished()  # earlier (good) saves complete; nothing new is saved
        logger.error(message)
        raise NonFiniteLossError(message)
    progress.add(step, values, step_seconds, input_seconds)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains as `config` says in `workdir`, resuming from its latest checkpoint if there is one.

    Returns {"step": last step, "metrics": last step's metrics, "export": path of the exported
    weights, "export_kind": "plugins" or "sam", "checkpoint_dir", "images_per_second",
    "input_wait_fraction", "resumed_from": step or None, "model": the trained model}.
    Raises NonFiniteLossError on a NaN/inf loss (the last good checkpoint stays).

    Resume order, on a workdir that holds checkpoints:
    1. The run identity stored with the latest checkpoint (model type, trainable subset, batch
       size, seed, process count, optimizer kind) is compared with this config's, first: a changed
       recipe fails with a ConfigError before anything is built, and before a state of another
       structure is read.
    2. The data-iterator state is restored into the freshly made iterator, before its first batch
       is read, so that batch is the one the interrupted run would have read next. It is read at
       once: a broken data root fails before the model is built, and the input threads work
       while it is.
    3. The model is built from the config (`sam_checkpoint`, `init_checkpoint` or `model_seed`):
       the frozen weights are not in the checkpoint, they are rebuilt. The Trainer's fresh state
       gives the shapes and shardings the stored one is read into.
    4. The train state (trainable weights, optimizer state, step, RNG) is restored, every array
       checked against the sha256 digest saved with it (a CheckpointError names a damaged one)
       and its step against the checkpoint's. The RNG is the run's base key: each step's key is
       `fold_in(rng, step)`, so the resumed steps draw what an uninterrupted run draws.
    5. `train_metrics.jsonl` is cut back to the restored step: rows after it came from steps the
       interrupted run did not checkpoint, and are written again.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # a private, unlocked copy
    initialize_distributed(config)
    validate_config(config)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)
    sync("workdir")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    metrics_path = os.path.join(workdir, METRICS_FILE)
    export_dir = os.path.join(workdir, "export", export_kind(config))

    source = make_source(config)
    epoch_steps = steps_per_epoch(config, len(source))
    num_steps = total_steps(config, len(source))
    iterator = iter(make_dataset(config, source))

    # Everything that can fail fast (a changed recipe, unreadable data) does so before the model
    # is built and compiled.
    manager = _checkpoint_manager(ckpt_dir, config)
    identity = _run_identity(config)
    resumed_from = _resume_data(manager, config, identity, iterator, workdir)
    start_step = resumed_from or 0
    # Read now: a broken data root fails before the model is built (resume order, step 2).
    first_batch = next(iterator) if start_step < num_steps else None

    trainer = Trainer(config, epoch_steps=epoch_steps)
    if resumed_from is not None:
        _resume_state(manager, trainer, resumed_from)
        if is_main:
            truncate_metrics(metrics_path, resumed_from)

    writer = make_metric_writer(os.path.join(workdir, "tensorboard"), enabled=is_main)
    if is_main:
        log_start(
            config,
            workdir,
            trainer,
            writer,
            records=len(source),
            epoch_steps=epoch_steps,
            num_steps=num_steps,
            resumed_from=resumed_from,
        )

    progress = Progress(config, metrics_path, writer, start_step=start_step, num_steps=num_steps)
    saver = _Saver(manager, ckpt_dir, trainer, iterator, identity, export_dir, resumed_from)
    pending: tuple | None = None  # (step, device metrics, step seconds, input seconds) in flight
    tick = time.perf_counter()
    try:
        for step in range(start_step + 1, num_steps + 1):
            input_start = time.perf_counter()
            if first_batch is not None:
                host_batch, first_batch = first_batch, None
            else:
                host_batch = next(iterator)
            batch = trainer.put_batch(host_batch)
            input_seconds = time.perf_counter() - input_start
            metrics = trainer.step(batch)
            # Step t is dispatched before step t-1's metrics are read, so the host prepares the
            # next batch while the device computes.
            if pending is not None:
                _record(pending, progress, saver)
            now = time.perf_counter()
            # Step time is measured between dispatches, so it includes input, compute and logging.
            pending = (step, metrics, now - tick, input_seconds)
            tick = now
            save_now = step == num_steps or (
                config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0
            )
            if save_now:
                _record(pending, progress, saver)
                pending = None
                saver.save(step, final=step == num_steps)
        if pending is not None:
            _record(pending, progress, saver)
        if on_process_zero(lambda: not os.path.exists(export_dir)):
            export(trainer, export_dir)  # a finished run restarted after its export was removed
        manager.wait_until_finished()
    finally:
        manager.close()
        progress.close()
    if is_main:
        logger.info(
            "done: step %d, loss %s, %.2f img/s, export %s",
            num_steps,
            progress.last.get("loss"),
            progress.total.rate(),
            export_dir,
        )
    return {
        "step": num_steps,
        "metrics": progress.last,
        "export": export_dir,
        "export_kind": export_kind(config),
        "checkpoint_dir": ckpt_dir,
        "images_per_second": progress.total.rate(),
        "input_wait_fraction": progress.total.wait_fraction(),
        "resumed_from": resumed_from,
        "model": trainer.trained_model(),
    }
