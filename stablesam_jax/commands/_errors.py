"""How every command reports a user's mistake: one line on stderr (`error: ...`) and exit status 2.

A user's mistake is an exception of one of the library's "the input is wrong" types
(`user_error_types`: a bad image, prompt, checkpoint, dataset, config or export, or a `UsageError`
the command raises itself); the message inside already says what was given and what to do, so
the traceback is noise. `@command` wraps a command's `main(argv)`: such errors become that one
line and exit status 2 (argparse's own usage errors exit 2 too). `--debug` anywhere on the command
line, or `STABLESAM_DEBUG=1` in the environment, lets them through with their traceback. Any other
exception is a bug in the program and always shows its traceback.

The absl commands (train, eval) run through `commands._absl`, which reports flag and
`--config.KEY` mistakes the same way.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence

EXIT_USAGE = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "STABLESAM_DEBUG"
DEBUG_HELP = f"show the traceback of an input error too (or set {DEBUG_ENV}=1)"


class UsageError(argparse.ArgumentTypeError, ValueError):
    """A mistake on the command line that a command finds itself (a missing input, an output that
    would replace an input). Raised by an argparse `type=` function it reads as a usage error."""


# (module, class) of the library's user-error types. They are looked up in sys.modules when an
# error is raised, so a command's `--help` need not import JAX to name them: a type whose module
# was never imported cannot have been raised.
_USER_ERRORS = (
    ("stablesam_jax.utils.validation", "InputError"),
    ("stablesam_jax.utils.io", "ImageReadError"),
    ("stablesam_jax.checkpoint", "CheckpointError"),
    ("stablesam_jax.data.folders", "DataError"),
    ("stablesam_jax.training.config", "ConfigError"),
    ("stablesam_jax.serving.embeddings", "ServingError"),
    ("stablesam_jax.tools.official", "OfficialSamUnavailable"),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [UsageError]
    for module_name, name in _USER_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None:
            types.append(getattr(module, name))
    return tuple(types)


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Lists `--debug` in the command's help (`@command` consumes it before parsing)."""
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)


def report(error: BaseException) -> int:
    print(f"error: {error}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def command(main: Callable[[list[str]], int | None]) -> Callable[..., int]:
    """Wraps `main(argv) -> exit status` (argv without the program name; `None` reads
    sys.argv): user errors print one line and return EXIT_USAGE (see the module docstring)."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = debug_requested(argv)
        try:
            status = main([arg for arg in argv if arg != DEBUG_FLAG])
        except user_error_types() as error:
            if debug:
                raise
            return report(error)
        return 0 if status is None else int(status)

    return wrapper
