"""The absl commands (train, eval): their shared `--config` flag, and runs that report mistakes
in flags and `--config.KEY=VALUE` overrides like any other usage error (`commands._errors`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from ._errors import UsageError

_CONFIG_FLAG: list = []  # the one --config FlagHolder, made on first use


def config_file_flag():
    """The `--config FILE` flag (train and eval name it alike). Defined once, so that both
    commands can be imported into one process (absl flags are global)."""
    if not _CONFIG_FLAG:
        _CONFIG_FLAG.append(
            config_flags.DEFINE_config_file(
                "config", None, "A config file (train/configs/*.py or eval/configs/*.py)."
            )
        )
    return _CONFIG_FLAG[0]


def loaded_config(example: str):
    """The value of `--config`, or a UsageError saying why there is none (not given; a file that
    does not exist or fails to load)."""
    config = config_file_flag().value
    if config is None:
        raise UsageError(f"pass --config {example}")
    try:
        config.keys()  # a file that failed to load yields a stand-in that raises on first use
    except OSError as error:
        raise UsageError(f"the --config file did not load: {error}") from error
    return config


def _parse_flags(argv: list[str]) -> list[str]:
    # Each run parses its own command line from the defaults (tests run commands in-process);
    # config_flags defines one flag per --config.KEY override while parsing, so earlier runs'
    # override flags go first.
    for name in list(flags.FLAGS):
        if type(flags.FLAGS[name]).__name__.startswith("_ConfigField"):
            delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        if not any(a == "--config" or a.startswith("--config=") for a in argv):
            overrides = [a for a in argv if a.startswith("--config.")]
            if overrides:
                raise UsageError(
                    f"{overrides[0]} overrides a field of --config FILE: pass the file too"
                ) from error
        raise UsageError(str(error)) from error
    except (AttributeError, KeyError) as error:
        # ml_collections raises these for a --config.KEY override that names no field.
        raise _unknown_override(error, argv) from error


def _unknown_override(error: Exception, argv: list[str]) -> UsageError:
    text = str(error)
    key = re.search(r"'([A-Za-z0-9_]+)", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    given = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    name = key.group(1) if key else "?"
    culprit = next((a for a in given if name in a.split(".")), " / ".join(given))
    return UsageError(
        f"{culprit}: the config has no field {name!r}"
        + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
        + "; the config file and its base config list the fields"
    )


def run_absl(main: Callable[[list[str]], int | None], argv: Sequence[str], prog: str) -> int:
    """Runs an absl `main` on `argv` (without the program name) and returns its exit status;
    mistakes in flags or `--config.KEY=VALUE` overrides raise UsageError."""
    saved, sys.argv = sys.argv, [prog, *argv]  # config_flags reads its overrides from sys.argv
    try:
        app.run(main, argv=sys.argv, flags_parser=_parse_flags)
    except SystemExit as done:  # app.run always ends in sys.exit(main's return value)
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0
