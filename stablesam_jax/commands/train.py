"""Command line: `python -m stablesam_jax.train --config train/configs/NAME.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.batch_size=8 --config.data.root=/data/hq`.
A workdir that already holds checkpoints resumes from the latest one. For a multi-host job run the
same command on every host (with `--config.distributed.coordinator_address=HOST:PORT
--config.distributed.num_processes=N --config.distributed.process_id=I` where the cluster is not
auto-detected). Exit status: 0 done, 1 bad config or data (the message names what to fix), 3 a
non-finite loss (the last good checkpoint stays).
"""

from __future__ import annotations

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ..data.folders import DataError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the export.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
    from .. import training  # after flag parsing: JAX starts here

    config = _CONFIG.value
    training.initialize_distributed(config, auto_detect=True)
    training.configure_logging()
    try:
        result = training.train(config, _WORKDIR.value)
    except training.NonFiniteLossError as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(3)
    except (training.ConfigError, DataError) as error:
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"exported {result['export_kind']} weights to {result['export']}", flush=True)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
