"""A persistent XLA compilation cache, so a second process starts without recompiling.

    from .compilation_cache import enable_compilation_cache
    enable_compilation_cache()            # before the first jitted call of the process

The directory is `cache_dir`, else $STABLESAM_JAX_CACHE_DIR, else ~/.cache/stablesam_jax/xla.
JAX by default only caches programs that took over a second to compile; here every program is
cached (min compile time 0, no minimum entry size), which is what makes small CPU programs and the
many small decoder/AMG programs start fast.

    python -m stablesam_jax.compilation_cache --bench [--model-type vit_t] [--workload amg]

runs the same workload in two fresh processes sharing an empty cache and prints JSON with the
first-call (compile + run) and steady-state times of each: the second process shows the cached
start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from ..serving.runtime import enable_persistent_cache

ENV_VAR = "STABLESAM_JAX_CACHE_DIR"


def default_cache_dir() -> str:
    return os.environ.get(ENV_VAR) or os.path.join(
        os.path.expanduser("~"), ".cache", "stablesam_jax", "xla"
    )


def enable_compilation_cache(cache_dir: str | None = None) -> str:
    """Turns on the persistent cache for this process; returns the directory used."""
    return enable_persistent_cache(cache_dir or default_cache_dir())


def _count_entries(cache_dir: str) -> int:
    return sum(len(files) for _, _, files in os.walk(cache_dir))


def _child(args) -> dict:
    import numpy as np

    t_start = time.perf_counter()
    enable_compilation_cache(args.cache_dir)
    import jax

    from ..builder import build_sam

    model = build_sam(args.model_type)
    size = model.img_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size * 3 // 4, size, 3), dtype=np.uint8) for _ in range(2)]
    t_ready = time.perf_counter()

    if args.workload == "amg":
        from ..automatic_mask_generator import SamAutomaticMaskGenerator

        gen = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side)

        def call(image):
            return len(gen.generate(image))
    else:
        from ..predictor import SamPredictor

        predictor = SamPredictor(model)

        def call(image):
            predictor.set_image(image)
            masks, _, _ = predictor.predict(np.array([[size // 3, size // 3]]), np.array([1]))
            return int(masks.sum())

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
    own_dir = cache_dir is None
    cache_dir = cache_dir or tempfile.mkdtemp(prefix="stablesam_xla_cache_")
    cmd = [
        sys.executable,
        "-m",
        "stablesam_jax.compilation_cache",
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
    for name in ("cold_process", "cached_process"):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["wall_s_including_imports"] = round(time.perf_counter() - t0, 3)
        result["cache_entries_after"] = _count_entries(cache_dir)
        runs[name] = result
    report = {
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
    if own_dir:
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stablesam_jax.compilation_cache")
    parser.add_argument("--bench", action="store_true", help="cold vs cached process start")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-type", default="vit_t")
    parser.add_argument("--workload", choices=("predictor", "amg"), default="predictor")
    parser.add_argument("--points-per-side", type=int, default=16, help="for --workload amg")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary directory")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    if args.bench:
        print(
            json.dumps(
                benchmark(args.model_type, args.workload, args.cache_dir, args.points_per_side),
                indent=2,
            )
        )
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
