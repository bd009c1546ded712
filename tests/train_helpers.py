"""Shared by the training tests: the tiny config and subprocess plumbing."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "train", "configs", "tiny.py")


def tiny_config(arg: str | None = None, **overrides):
    """train/configs/tiny.py with dotted-name overrides: tiny_config(**{"data.num_scenes": 8})."""
    spec = importlib.util.spec_from_file_location("tiny_config", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    for name, value in overrides.items():
        target = config
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def flag_overrides(**overrides) -> list[str]:
    return [f"--config.{name}={value}" for name, value in overrides.items()]


@functools.cache
def shared_cache_dir() -> str:
    """A persistent XLA cache shared by this pytest process's training subprocesses: the first one
    compiles SAM's init and step programs, the others load them (a vit_t build alone is ~14 s of
    eager compiles on a 2-core CPU). Removed when pytest exits."""
    path = tempfile.mkdtemp(prefix="stablesam_train_tests_xla_")
    atexit.register(shutil.rmtree, path, True)
    return path


def subprocess_env(cache_dir: str | None = None, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    if cache_dir:
        # Later subprocesses of a test reuse the first one's compiled programs.
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    env.update(extra or {})
    return env


def train_command(workdir: str, arg: str | None = None, **overrides) -> list[str]:
    config = TINY + (f":{arg}" if arg else "")
    return [
        sys.executable,
        "-m",
        "stablesam_jax.train",
        f"--config={config}",
        f"--workdir={workdir}",
        *flag_overrides(**overrides),
    ]


def run(cmd, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
