"""A persistent XLA compilation cache, so a second process starts without recompiling.

    from stablesam_jax.utils.compilation_cache import enable_compilation_cache
    enable_compilation_cache()            # before the first jitted call of the process

The directory is `cache_dir`, else $STABLESAM_JAX_CACHE_DIR, else ~/.cache/stablesam_jax/xla.
JAX by default only caches programs that took over a second to compile; here every program is
cached (min compile time 0, no minimum entry size), which is what makes small CPU programs and the
many small decoder/AMG programs start fast. `python -m stablesam_jax.commands.cache_bench --bench`
measures the cold and the cached start.
"""

from __future__ import annotations

import os

import jax

ENV_VAR = "STABLESAM_JAX_CACHE_DIR"


def default_cache_dir() -> str:
    return os.environ.get(ENV_VAR) or os.path.join(
        os.path.expanduser("~"), ".cache", "stablesam_jax", "xla"
    )


def enable_persistent_cache(cache_dir: str | os.PathLike) -> str:
    """The persistent compilation cache in `cache_dir` with no minimum compile time or entry size
    (so the small CPU programs are cached too). Call before the first compilation of the
    process; returns the absolute directory."""
    cache_dir = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return cache_dir


def enable_compilation_cache(cache_dir: str | None = None) -> str:
    """Turns on the persistent cache for this process; returns the directory used."""
    return enable_persistent_cache(cache_dir or default_cache_dir())
