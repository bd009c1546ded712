"""Command line: `python -m stablesam_jax.train --config train/configs/NAME.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.batch_size=8 --config.data.root=/data/hq`.
A workdir that already holds checkpoints resumes from the latest one. For a multi-host job run the
same command on every host (with `--config.distributed.coordinator_address=HOST:PORT
--config.distributed.num_processes=N --config.distributed.process_id=I` where the cluster is not
auto-detected). Exit status: 0 done, 2 a usage error: a bad flag, config, data or checkpoint (the
message names what to fix; `--debug` or STABLESAM_DEBUG=1 adds the traceback), 3 a non-finite
loss (the last good checkpoint stays).
"""

from __future__ import annotations

import os
import sys

from absl import flags
from absl import logging as absl_logging

from ._absl import config_file_flag, loaded_config, run_absl
from ._errors import UsageError, command
from ._outputs import check_output_dir, is_within, refuse_overwriting, removed_if_left_empty

PROG = "python -m stablesam_jax.train"
EXIT_NON_FINITE_LOSS = 3

_CONFIG = config_file_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the export.")


def _check_workdir(config, workdir: str) -> None:
    """The workdir is a folder that holds none of the run's inputs, and its export replaces none."""
    check_output_dir(workdir, "--workdir")
    checkpoints = [config.get("sam_checkpoint"), config.get("init_checkpoint")]
    refuse_overwriting(workdir, checkpoints, "--workdir", inside=True)
    data = config.get("data", {})
    folders = [data.get(key) for key in ("root", "image_dir", "mask_dir")]
    refuse_overwriting(workdir, folders, "--workdir")
    export = os.path.join(workdir, "export")
    for path in checkpoints:
        if path and is_within(path, export):
            raise UsageError(
                f"the checkpoint {path} lies in {export}, which this run's export replaces; "
                "copy it elsewhere or choose another --workdir"
            )


def _train(argv: list[str]) -> int:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE overrides")
    if _WORKDIR.value is None:
        raise UsageError("pass --workdir DIR (checkpoints, logs and the export go there)")
    config = loaded_config("train/configs/NAME.py")
    _check_workdir(config, _WORKDIR.value)
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
    from .. import training  # after flag parsing: JAX starts here

    training.initialize_distributed(config, auto_detect=True)
    training.configure_logging()
    with removed_if_left_empty(_WORKDIR.value):
        try:
            result = training.train(config, _WORKDIR.value)
        except training.NonFiniteLossError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return EXIT_NON_FINITE_LOSS
    print(f"exported {result['export_kind']} weights to {result['export']}", flush=True)
    return 0


@command
def main(argv: list[str]) -> int:
    return run_absl(_train, argv, PROG)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
