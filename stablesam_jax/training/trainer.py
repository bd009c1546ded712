"""The model of a config, split into (trainable, frozen) state, with the optimizer and the jitted,
sharded `step.train_step`; and the export of its trained weights.

Sharding: one mesh axis "data" over every device of every process; the batch is split along it and
all weights are replicated. Each process reads its own slice of the data and
`jax.make_array_from_process_local_data` assembles the global batch. The train state is donated to
the step, so it is updated in place.
"""

from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .. import builder
from .. import checkpoint as ckpt
from ..modeling.sam import Sam, count_params
from . import step as step_lib
from .config import DTYPES, ConfigError
from .data import DEVICE_FIELDS
from .distributed import local_copy, make_mesh, replicate, sync
from .optim import make_optimizer, make_schedule
from .trainable import subset_filter


def build_model(config: ml_collections.ConfigDict) -> Sam:
    """SAM or Stable-SAM as the config says, from `sam_checkpoint` or random (`model_seed`), then
    `init_checkpoint` loaded over it. With `hq_from_sam`, `sam_checkpoint` holds plain SAM weights
    of the HQ model's base variant and HQ-SAM's own modules start from `model_seed`."""
    common = dict(
        dtype=DTYPES[config.dtype], attention_impl=config.attention_impl, seed=config.model_seed
    )
    checkpoint = None if config.hq_from_sam else config.sam_checkpoint
    if config.with_plugins:
        options = dict(config.plugins.to_dict())
        options["dsp_layers"] = tuple(options["dsp_layers"])
        options["plugin_seed"] = options.pop("seed", None)
        model = builder.build_stable_sam(config.model_type, checkpoint, **common, **options)
    else:
        model = builder.build_sam(config.model_type, checkpoint, **common)
    if config.hq_from_sam:
        builder.load_sam_into_hq(model, config.sam_checkpoint)
    if config.init_checkpoint:
        ckpt.load_into(model, config.init_checkpoint)
    return model


def jit_train_step(mesh: jax.sharding.Mesh):
    """`step.train_step` jitted as the Trainer runs it on `mesh`: weights and state replicated,
    the batch split along "data", the state donated. Static arguments: `step.STATIC_ARGNUMS`.
    Benchmarks and `jax.export` (lowering for another platform) use the same function."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step_lib.train_step,
        static_argnums=step_lib.STATIC_ARGNUMS,
        # (state, frozen, batch): in_shardings name the non-static arguments only.
        in_shardings=(replicated, replicated, NamedSharding(mesh, P("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=(1,),  # the state
    )


class Trainer:
    """The model split into (trainable, frozen) state, the optimizer, and the jitted sharded step.

    `state` = {"params": {dotted name: array} (the trainable subset), "opt_state", "step",
    "rng"}: a plain pytree that Orbax saves and restores as is (see `step.train_step`)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: Sam | None = None,
        *,
        mesh: jax.sharding.Mesh | None = None,
        epoch_steps: int = 1,
    ):
        self.config = config
        self.model = build_model(config) if model is None else model
        self.mesh = make_mesh() if mesh is None else mesh
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P("data"))

        self.model_def, params, frozen = step_lib.split_model(
            self.model, subset_filter(config.trainable)
        )
        self.names = list(self.model_def.names)
        if not self.names:
            raise ConfigError(
                f"trainable subset {config.trainable!r} selects no weight of this model"
            )
        self.num_trainable = int(sum(np.prod(leaf.shape) for leaf in params.values()))
        self.num_total = count_params(self.model, nnx.Param)
        self.schedule = make_schedule(config.optimizer, epoch_steps)
        self.optimizer = make_optimizer(config.optimizer, self.schedule)
        self.settings = step_lib.StepSettings.from_config(config)

        params = replicate(params, self.replicated)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.replicated)(params)
        rng = jax.random.key_data(jax.random.key(config.seed))
        self.state = {
            "params": params,
            "opt_state": opt_state,
            "step": replicate(np.int32(0), self.replicated),
            "rng": replicate(np.asarray(rng), self.replicated),
        }
        # copy=False: the frozen state is never donated, so it may share the model's arrays.
        self.frozen = replicate(frozen, self.replicated, copy=False)
        self._step = jit_train_step(self.mesh)

    def put_batch(self, local_batch: dict) -> dict:
        """This process's batch (numpy) -> the global batch, sharded along "data"."""
        fields = {name: np.asarray(local_batch[name]) for name in DEVICE_FIELDS}
        return jax.make_array_from_process_local_data(self.data_sharding, fields)

    def step(self, device_batch: dict) -> dict:
        """Runs one step in place (the old state is donated); returns the metrics (on device)."""
        self.state, metrics = self._step(
            self.model_def,
            self.state,
            self.frozen,
            device_batch,
            self.optimizer,
            self.schedule,
            self.settings,
        )
        return metrics

    def abstract_state(self):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state
        )

    def trained_model(self) -> Sam:
        """The model with the current trainable weights (host-side merge, no copy of the frozen
        weights)."""
        params = {k: local_copy(v) for k, v in self.state["params"].items()}
        frozen = jax.tree.map(local_copy, self.frozen)
        return self.model_def.merge(params, frozen)


def export_kind(config) -> str:
    """ "plugins" (a plugin checkpoint) for the plugins subset, else "sam" (a full SAM)."""
    return "plugins" if config.trainable == "plugins" else "sam"


def export(trainer: Trainer, directory: str) -> str:
    """Writes the trained weights where `build_stable_sam(plugins=...)` / `build_sam(checkpoint=...)`
    read them, replacing an earlier export: written next to it, then swapped in by renames, so a
    crash never leaves a half-written export under the final name."""
    directory = os.path.abspath(directory)
    staging = directory + ".new"
    previous = directory + ".old"
    if jax.process_index() == 0:
        for path in (staging, previous):
            shutil.rmtree(path, ignore_errors=True)
    sync("export-start")
    model = trainer.trained_model()
    if export_kind(trainer.config) == "plugins":
        builder.save_plugins(model, staging)
    else:
        builder.save_merged(model, staging)
    sync("export-written")
    if jax.process_index() == 0:
        if os.path.exists(directory):
            os.rename(directory, previous)
        os.rename(staging, directory)
        shutil.rmtree(previous, ignore_errors=True)
    sync("export-done")
    return directory
