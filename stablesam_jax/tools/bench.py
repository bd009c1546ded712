"""Speed benchmark library: image encoder throughput, prompt decoding latency, FLOP counts.

The command is `python -m stablesam_jax.commands.bench`; the official PyTorch side (and
`SamPredictor.set_image` against the official predictor) is `stablesam_jax.tools.bench_torch`.
Random weights (speed does not depend on their values). Every result is one JSON line on
stdout with the date, device, software versions and the command that produced it. Times are
wall clock after warm-up, each call synchronized (`block_until_ready`); medians and minima over
`iters` calls. FLOP counts and peak figures: `stablesam_jax.tools.flops`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import builder
from ..modeling.sam import decode_prompts
from .flops import encoder_flops, peak_tflops

DEFAULT_PROMPT_COUNTS = (1, 16, 64, 256)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What every benchmark of one run shares (the command's flags)."""

    model_type: str = "vit_h"
    batch: int = 8
    dtype: str = "bfloat16"
    attention_impl: str = "fast"
    # lax.scan over encoder blocks; the command's default is on for a GPU, off for a CPU.
    scan_blocks: bool = False
    warmup: int = 3
    iters: int = 10
    prompts: tuple[int, ...] = DEFAULT_PROMPT_COUNTS
    image_size: tuple[int, int] = (480, 640)
    seed: int = 0


# ----------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def timed(fn, iters: int) -> list[float]:
    """Seconds per call of `fn` (which must return only after the device finished)."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cpu_timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call. CPU time adds up all threads; on one
    pinned core (`taskset -c 1`) it is the work done, whatever else runs on the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def ms_stats(times: list[float]) -> dict:
    """Median and minimum in milliseconds."""
    return {
        "ms_median": round(1e3 * statistics.median(times), 3),
        "ms_min": round(1e3 * min(times), 3),
    }


def peak_memory_bytes(device) -> int | None:
    """The device allocator's peak so far (this process), where the backend reports one (GPU,
    TPU; not a CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def program_memory(compiled) -> dict:
    """What XLA planned for one compiled program: bytes of its arguments, outputs and temporaries
    (per program, unlike the allocator's process-wide peak); {} where the backend says nothing."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend offers a memory analysis
        return {}
    if stats is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    return {f"program_{name.split('_size')[0]}_bytes": int(getattr(stats, name)) for name in fields}


def _xla_flops(compiled) -> float | None:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend offers a cost model
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def cpu_cores() -> int:
    """The cores this process may use (`taskset`): the budget XLA, and torch, get."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class Context:
    """What every JSON line carries: when, where, with what, and the command."""

    def __init__(self, settings: BenchSettings, command: str):
        self.device = jax.devices()[0]
        self.common = {
            "date": _now(),
            "device": self.device.device_kind,
            "platform": self.device.platform,
            "device_count": jax.device_count(),
            "host": platform.processor() or platform.machine(),
            "cpu_cores": cpu_cores(),
            "jax": jax.__version__,
            # compile_s reads a cache hit's load time where a persistent cache is on.
            "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
            "command": command,
        }
        self.settings = settings
        self.records: list[dict] = []  # everything emitted, in order

    def emit(self, record: dict) -> None:
        record = {**record, **self.common}
        self.records.append(record)
        print(json.dumps(record), flush=True)


_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(settings: BenchSettings, *, plugins: bool, model_type: str | None = None):
    """The benchmarked SAM (or Stable-SAM with `plugins`), random weights."""
    kwargs = dict(
        dtype=_DTYPES[settings.dtype],
        attention_impl=settings.attention_impl,
        seed=settings.seed,
        scan_blocks=settings.scan_blocks,
    )
    model_type = model_type or settings.model_type
    if plugins:
        return builder.build_stable_sam(model_type, **kwargs)
    return builder.build_sam(model_type, **kwargs)


# ----------------------------------------------------------------------------- JAX runs


def bench_encoder(ctx: Context, model) -> dict:
    """A batch of images through the image encoder: throughput, compile time, achieved FLOP/s."""
    settings = ctx.settings
    graphdef, state = nnx.split(model.image_encoder)

    def encode(state, x):
        return nnx.merge(graphdef, state)(x)

    # No donation: XLA can only reuse a donated buffer for an output of the same shape, and the
    # encoder's output (B x 64 x 64 x 256) never matches its input (B x 1024 x 1024 x 3).
    encode_jit = jax.jit(encode)
    s = model.img_size
    rng = np.random.default_rng(settings.seed)
    x_host = rng.standard_normal((settings.batch, s, s, 3)).astype(np.float32)

    start = time.perf_counter()
    lowered = encode_jit.lower(state, jax.ShapeDtypeStruct(x_host.shape, jnp.float32))
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    def one_call():
        x = jax.device_put(x_host)
        x.block_until_ready()
        start = time.perf_counter()
        compiled(state, x).block_until_ready()
        return time.perf_counter() - start

    for _ in range(settings.warmup):
        one_call()
    times = [one_call() for _ in range(settings.iters)]
    median = statistics.median(times)
    flops = encoder_flops(model.config)
    achieved = settings.batch * flops / median / 1e12
    peak = peak_tflops(ctx.device.device_kind, settings.dtype)
    xla_flops = _xla_flops(compiled)
    record = {
        "bench": "encoder",
        "impl": "jax",
        "model_type": model.model_type,
        "batch": settings.batch,
        "dtype": settings.dtype,
        "attention_impl": settings.attention_impl,
        "scan_blocks": settings.scan_blocks,
        "images_per_s": round(settings.batch / median, 3),
        "ms_per_batch": round(1e3 * median, 3),
        "ms_per_batch_min": round(1e3 * min(times), 3),
        "compile_s": round(compile_s, 2),
        "model_tflop_per_image": round(flops / 1e12, 4),
        "xla_tflop_per_image": None
        if xla_flops is None
        else round(xla_flops / settings.batch / 1e12, 4),
        "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak,
        "share_of_peak": None if peak is None else round(achieved / peak, 4),
        "peak_memory_bytes": peak_memory_bytes(ctx.device),
        **program_memory(compiled),
        "iters": settings.iters,
        "warmup": settings.warmup,
    }
    ctx.emit(record)
    return record


def boxes_for(n: int, img_size: int, seed: int) -> np.ndarray:
    """n random XYXY boxes inside an img_size square (the same ones for JAX and torch)."""
    rng = np.random.default_rng(seed)
    corners = rng.random((n, 2, 2)) * img_size
    return np.concatenate([corners.min(1), corners.max(1)], axis=-1).astype(np.float32)


def bench_decoder(ctx: Context, model, plugins: bool) -> list[dict]:
    """Prompt encoder + mask decoder for N box prompts on one image embedding in one call (the
    anchor's measure), multimask output, low-res logits and IoU scores on the device."""
    settings = ctx.settings
    # Only the decoding modules' weights cross the call boundary: each jitted call flattens its
    # arguments, and the encoder's hundreds of arrays would add host time to every call.
    prompt_graphdef, prompt_state = nnx.split(model.prompt_encoder)
    decoder_graphdef, decoder_state = nnx.split(model.mask_decoder)
    state = (prompt_state, decoder_state)
    grid = model.config.image_embedding_size
    features = jax.device_put(
        np.random.default_rng(settings.seed)
        .standard_normal((grid, grid, model.config.prompt_embed_dim))
        .astype(np.float32)
    )

    @jax.jit
    def decode(state, features, boxes):
        prompt_encoder = nnx.merge(prompt_graphdef, state[0])
        mask_decoder = nnx.merge(decoder_graphdef, state[1])
        return decode_prompts(
            prompt_encoder, mask_decoder, features[None], boxes=boxes, multimask_output=True
        )

    records = []
    for n in settings.prompts:
        boxes = jnp.asarray(boxes_for(n, model.img_size, settings.seed + n))
        start = time.perf_counter()
        compiled = decode.lower(state, features, boxes).compile()
        compile_s = time.perf_counter() - start

        def call(compiled=compiled, boxes=boxes):
            jax.block_until_ready(compiled(state, features, boxes))

        for _ in range(settings.warmup):
            call()
        times = timed(call, settings.iters)
        record = {
            "bench": "decoder",
            "impl": "jax",
            "model_type": model.model_type,
            "plugins": plugins,
            "prompts": n,
            "dtype": settings.dtype,
            **ms_stats(times),
            "compile_s": round(compile_s, 2),
            **program_memory(compiled),
            "iters": settings.iters,
        }
        ctx.emit(record)
        records.append(record)
    return records


def run(
    ctx: Context,
    *,
    parts=("encoder", "decoder"),
    plugins: bool = False,
    compare_torch: bool = False,
    model_type: str | None = None,
) -> tuple[dict | None, list[dict]]:
    """One model size (default: the settings'): the encoder and/or the decoder (also with the
    plugins), then the official PyTorch SAM on the same shapes. Returns (encoder record or None,
    decoder records); every record is also in `ctx.records`."""
    if compare_torch:
        # torch is optional (the `dev` extra): only the comparison needs it.
        from . import bench_torch
    model = build_model(ctx.settings, plugins=False, model_type=model_type)
    encoder, decoder = None, []
    if "encoder" in parts:
        encoder = bench_encoder(ctx, model)
    if "decoder" in parts:
        decoder += bench_decoder(ctx, model, plugins=False)
        if plugins:
            stable = build_model(ctx.settings, plugins=True, model_type=model_type)
            decoder += bench_decoder(ctx, stable, plugins=True)
    if compare_torch:
        bench_torch.bench_torch(ctx, model.config, encoder, decoder)
    return encoder, decoder
