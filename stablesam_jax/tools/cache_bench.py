"""What the persistent compilation cache saves: the same workload in two fresh processes sharing
one empty cache, timed in each; the second process shows the cached start.

`benchmark` starts the processes (`python -m stablesam_jax.commands.cache_bench --child ...`);
`run_workload` is what each of them runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from ..automatic_mask_generator import SamAutomaticMaskGenerator
from ..builder import build_sam
from ..predictor import SamPredictor
from ..utils.compilation_cache import enable_compilation_cache

WORKLOADS = ("predictor", "amg")
CHILD_MODULE = "stablesam_jax.commands.cache_bench"


def count_entries(cache_dir: str) -> int:
    return sum(len(files) for _, _, files in os.walk(cache_dir))


def _workload(model, workload: str, points_per_side: int):
    """A function image -> a number, running the workload's compiled programs once."""
    if workload == "amg":
        gen = SamAutomaticMaskGenerator(model, points_per_side=points_per_side)
        return lambda image: len(gen.generate(image))
    predictor = SamPredictor(model)
    size = model.img_size

    def call(image):
        predictor.set_image(image)
        masks, _, _ = predictor.predict(np.array([[size // 3, size // 3]]), np.array([1]))
        return int(masks.sum())

    return call


def run_workload(model_type: str, workload: str, cache_dir: str, points_per_side: int) -> dict:
    """One process's run: the cache turned on, the model built, the workload called on two
    images (first call: compile or cache load + run; second: steady state)."""
    t_start = time.perf_counter()
    enable_compilation_cache(cache_dir)
    model = build_sam(model_type)
    size = model.img_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size * 3 // 4, size, 3), dtype=np.uint8) for _ in range(2)]
    t_ready = time.perf_counter()
    call = _workload(model, workload, points_per_side)
    t0 = time.perf_counter()
    call(images[0])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    call(images[1])
    second = time.perf_counter() - t0
    return {
        "first_call_s": round(first, 3),
        "steady_call_s": round(second, 3),
        "model_build_s": round(t_ready - t_start, 3),
        "process_total_s": round(time.perf_counter() - t_start, 3),
        "backend": jax.default_backend(),
    }


def benchmark(model_type: str, workload: str, cache_dir: str | None, points_per_side: int) -> dict:
    """Cold vs cached process: runs the workload in two child processes, one after the other, on
    `cache_dir` (a fresh temporary directory, removed afterwards, when None)."""
    own_dir = cache_dir is None
    cache_dir = cache_dir or tempfile.mkdtemp(prefix="stablesam_xla_cache_")
    cmd = [
        sys.executable,
        "-m",
        CHILD_MODULE,
        "--child",
        "--model-type",
        model_type,
        "--workload",
        workload,
        "--cache-dir",
        cache_dir,
        "--points-per-side",
        str(points_per_side),
    ]
    runs = {}
    try:
        for name in ("cold_process", "cached_process"):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["wall_s_including_imports"] = round(time.perf_counter() - t0, 3)
            result["cache_entries_after"] = count_entries(cache_dir)
            runs[name] = result
    finally:
        if own_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "model_type": model_type,
        "workload": workload,
        "cache_dir": cache_dir if not own_dir else "(temporary)",
        **runs,
        "first_call_speedup": round(
            runs["cold_process"]["first_call_s"]
            / max(runs["cached_process"]["first_call_s"], 1e-9),
            2,
        ),
    }
