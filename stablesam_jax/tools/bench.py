"""Speed benchmark: image encoder throughput, prompt decoding latency, `set_image` end to end.

    python -m stablesam_jax.bench --model-type vit_h --batch 8 --dtype bfloat16 \\
        [--plugins] [--compare-torch] [--warmup 3] [--iters 10] [--attention-impl fast]
    python -m stablesam_jax.bench --set-image            # vit_b SamPredictor.set_image vs torch

Random weights (speed does not depend on their values). Every result is one JSON line on
stdout with the date, device, software versions and the command that produced it. Times are
wall clock after warm-up, each call synchronized (`block_until_ready`); medians and minima over
`--iters` calls.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time

import numpy as np

# Dense peak TFLOP/s per device, (16-bit tensor cores, float32 without TF32): vendor figures.
# Device kinds are matched by substring, first match wins (so "H100 PCIe" before "H100").
PEAK_TFLOPS = (
    ("H100 PCIe", (756.0, 51.0)),
    ("H100 NVL", (835.0, 60.0)),
    ("H100", (989.0, 67.0)),
    ("H200", (989.0, 67.0)),
    ("GH200", (989.0, 67.0)),
    ("A100", (312.0, 19.5)),
    ("L4", (121.0, 30.3)),
)

DEFAULT_PROMPT_COUNTS = (1, 16, 64, 256)


# ----------------------------------------------------------------------------- FLOP counts


def encoder_flops(config, *, windowed_projection_on_padding: bool = True) -> float:
    """FLOPs (2 x multiply-adds) of one image through SAM's image encoder, as the official
    algorithm computes it: the model's cost, independent of how an implementation runs it.

    windowed_projection_on_padding: the official code projects qkv and output of padded window
    tokens too; False counts what the fast path does (it skips them)."""
    dim = config.encoder_embed_dim
    grid = config.img_size // config.patch_size
    tokens = grid * grid
    window = config.window_size
    padded_side = -(-grid // window) * window
    head_dim = dim // config.encoder_num_heads
    heads = config.encoder_num_heads
    mlp = 4 * dim

    def attention(n_tokens_per_seq: int, n_seqs: int, side: int) -> float:
        qk_and_pv = 2 * 2 * n_tokens_per_seq * n_tokens_per_seq * head_dim * heads
        rel_pos = 2 * n_tokens_per_seq * (2 * side) * head_dim * heads
        return n_seqs * (qk_and_pv + rel_pos)

    total = 2 * tokens * (config.patch_size**2 * 3) * dim  # patch embedding
    for i in range(config.encoder_depth):
        if i in config.encoder_global_attn_indexes:
            projected = tokens
            total += attention(tokens, 1, grid)
        else:
            projected = padded_side**2 if windowed_projection_on_padding else tokens
            total += attention(window * window, (padded_side // window) ** 2, window)
        total += 2 * projected * dim * (3 * dim + dim)  # qkv, proj
        total += 2 * tokens * dim * mlp * 2  # MLP
    out = config.prompt_embed_dim
    total += 2 * tokens * dim * out + 2 * tokens * out * out * 9  # neck: 1x1 and 3x3 convs
    return float(total)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    for name, (half, single) in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return half if dtype in ("bfloat16", "float16") else single
    return None


# ----------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _timed(fn, iters: int) -> list[float]:
    """Seconds per call of `fn` (which must return only after the device finished)."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _cpu_timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call. CPU time adds up all threads; on one
    pinned core (`taskset -c 1`) it is the work done, whatever else runs on the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _ms(times: list[float]) -> dict:
    return {
        "ms_median": round(1e3 * statistics.median(times), 3),
        "ms_min": round(1e3 * min(times), 3),
    }


def _peak_memory_bytes(device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def _xla_flops(compiled) -> float | None:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend offers a cost model
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


class Context:
    """What every JSON line carries: when, where, with what, and the command."""

    def __init__(self, args, argv):
        import jax

        self.device = jax.devices()[0]
        self.common = {
            "date": _now(),
            "device": self.device.device_kind,
            "platform": self.device.platform,
            "device_count": jax.device_count(),
            "host": platform.processor() or platform.machine(),
            "cpu_cores": _cpu_cores(),
            "jax": jax.__version__,
            # compile_s reads a cache hit's load time where a persistent cache is on.
            "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
            "command": "python -m stablesam_jax.bench " + " ".join(shlex.quote(a) for a in argv),
        }
        self.args = args

    def emit(self, record: dict) -> None:
        print(json.dumps({**record, **self.common}), flush=True)


def _cpu_cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _dtype(name: str):
    import jax.numpy as jnp

    return {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def _build(args, *, plugins: bool, model_type: str):
    from .. import builder

    kwargs = dict(
        dtype=_dtype(args.dtype),
        attention_impl=args.attention_impl,
        seed=args.seed,
        scan_blocks=args.scan_blocks,
    )
    if plugins:
        return builder.build_stable_sam(model_type, **kwargs)
    return builder.build_sam(model_type, **kwargs)


# ----------------------------------------------------------------------------- JAX runs


def bench_encoder(ctx: Context, model) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    args = ctx.args
    graphdef, state = nnx.split(model.image_encoder)

    def encode(state, x):
        return nnx.merge(graphdef, state)(x)

    # No donation: XLA can only reuse a donated buffer for an output of the same shape, and the
    # encoder's output (B x 64 x 64 x 256) never matches its input (B x 1024 x 1024 x 3).
    encode_jit = jax.jit(encode)
    s = model.img_size
    rng = np.random.default_rng(args.seed)
    x_host = rng.standard_normal((args.batch, s, s, 3)).astype(np.float32)

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

    for _ in range(args.warmup):
        one_call()
    times = [one_call() for _ in range(args.iters)]
    median = statistics.median(times)
    flops = encoder_flops(model.config)
    achieved = args.batch * flops / median / 1e12
    peak = peak_tflops(ctx.device.device_kind, args.dtype)
    xla_flops = _xla_flops(compiled)
    record = {
        "bench": "encoder",
        "impl": "jax",
        "model_type": model.model_type,
        "batch": args.batch,
        "dtype": args.dtype,
        "attention_impl": args.attention_impl,
        "scan_blocks": args.scan_blocks,
        "images_per_s": round(args.batch / median, 3),
        "ms_per_batch": round(1e3 * median, 3),
        "ms_per_batch_min": round(1e3 * min(times), 3),
        "compile_s": round(compile_s, 2),
        "model_tflop_per_image": round(flops / 1e12, 4),
        "xla_tflop_per_image": None
        if xla_flops is None
        else round(xla_flops / args.batch / 1e12, 4),
        "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak,
        "share_of_peak": None if peak is None else round(achieved / peak, 4),
        "peak_memory_bytes": _peak_memory_bytes(ctx.device),
        "iters": args.iters,
        "warmup": args.warmup,
    }
    ctx.emit(record)
    return record


def _boxes(n: int, img_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = rng.random((n, 2, 2)) * img_size
    return np.concatenate([corners.min(1), corners.max(1)], axis=-1).astype(np.float32)


def bench_decoder(ctx: Context, model, plugins: bool) -> list[dict]:
    """Prompt encoder + mask decoder for N box prompts on one image embedding in one call (the
    anchor's measure), multimask output, low-res logits and IoU scores on the device."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..modeling.sam import decode_prompts

    args = ctx.args
    # Only the decoding modules' weights cross the call boundary: each jitted call flattens its
    # arguments, and the encoder's hundreds of arrays would add host time to every call.
    prompt_graphdef, prompt_state = nnx.split(model.prompt_encoder)
    decoder_graphdef, decoder_state = nnx.split(model.mask_decoder)
    state = (prompt_state, decoder_state)
    grid = model.config.image_embedding_size
    features = jax.device_put(
        np.random.default_rng(args.seed)
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
    for n in args.prompts:
        boxes = jnp.asarray(_boxes(n, model.img_size, args.seed + n))
        start = time.perf_counter()
        compiled = decode.lower(state, features, boxes).compile()
        compile_s = time.perf_counter() - start

        def call(compiled=compiled, boxes=boxes):
            jax.block_until_ready(compiled(state, features, boxes))

        for _ in range(args.warmup):
            call()
        times = _timed(call, args.iters)
        record = {
            "bench": "decoder",
            "impl": "jax",
            "model_type": model.model_type,
            "plugins": plugins,
            "prompts": n,
            "dtype": args.dtype,
            **_ms(times),
            "compile_s": round(compile_s, 2),
            "iters": args.iters,
        }
        ctx.emit(record)
        records.append(record)
    return records


# ----------------------------------------------------------------------------- torch runs


def _torch_device(ctx: Context) -> tuple[str | None, str]:
    """The torch device matching JAX's, or (None, why not)."""
    import torch

    if ctx.device.platform == "cpu":
        # The cores this process may use (`taskset`), the same budget XLA gets.
        torch.set_num_threads(_cpu_cores())
        return "cpu", ""
    if ctx.device.platform == "gpu" and torch.cuda.is_available():
        return "cuda", ""
    return None, f"torch has no device matching JAX's {ctx.device.platform} here"


def _torch_autocast(device: str, dtype: str):
    import contextlib

    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


def _torch_sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_torch(ctx: Context, config, jax_encoder: dict | None, jax_decoder: list[dict]) -> None:
    """The official PyTorch SAM with the same config, same process, same kind of device."""
    import torch

    from .official import build_official_sam

    args = ctx.args
    device, why = _torch_device(ctx)
    if device is None:
        ctx.emit({"bench": "torch", "skipped": why})
        return
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what the anchors measured
        torch.backends.cudnn.allow_tf32 = True
    sam = build_official_sam(config).to(device)
    base = {"impl": "torch", "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if jax_encoder is not None:
        x = torch.randn(args.batch, 3, config.img_size, config.img_size, device=device)

        def encode():
            with torch.inference_mode(), _torch_autocast(device, args.dtype):
                sam.image_encoder(x)
            _torch_sync(device)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            encode()
        times = _timed(encode, args.iters)
        median = statistics.median(times)
        record = {
            "bench": "encoder",
            **base,
            "model_type": jax_encoder["model_type"],
            "batch": args.batch,
            "dtype": args.dtype,
            "images_per_s": round(args.batch / median, 3),
            "ms_per_batch": round(1e3 * median, 3),
            "ms_per_batch_min": round(1e3 * min(times), 3),
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
            "jax_speedup": round(jax_encoder["images_per_s"] / (args.batch / median), 3),
            "iters": args.iters,
        }
        ctx.emit(record)
    grid = config.img_size // config.patch_size
    emb = torch.randn(1, config.prompt_embed_dim, grid, grid, device=device)
    for jax_record in jax_decoder:
        if jax_record["plugins"]:
            continue  # the official SAM has no plugins
        n = jax_record["prompts"]
        boxes = torch.from_numpy(_boxes(n, config.img_size, args.seed + n)).to(device)

        def decode(boxes=boxes):
            with torch.inference_mode(), _torch_autocast(device, args.dtype):
                sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
                sam.mask_decoder(
                    image_embeddings=emb,
                    image_pe=sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
            _torch_sync(device)

        for _ in range(args.warmup):
            decode()
        times = _timed(decode, args.iters)
        ms = _ms(times)
        ctx.emit(
            {
                "bench": "decoder",
                **base,
                "model_type": jax_record["model_type"],
                "plugins": False,
                "prompts": n,
                "dtype": args.dtype,
                **ms,
                "jax_speedup": round(ms["ms_median"] / jax_record["ms_median"], 3),
                "iters": args.iters,
            }
        )


# ----------------------------------------------------------------------------- set_image


def bench_set_image(ctx: Context, model_type: str) -> dict:
    """`SamPredictor.set_image` end to end (resize, normalize, encode, result on the device) for
    ours and the official predictor, on one image; calls alternate between the two so load from
    other processes hits both alike."""
    import jax
    import torch

    from ..modeling import SAM_VARIANTS
    from ..predictor import SamPredictor
    from .official import (
        build_official_sam,
        import_official_modeling,
        install_torchvision_stand_in,
    )

    args = ctx.args
    install_torchvision_stand_in()
    import_official_modeling()
    from segment_anything.predictor import SamPredictor as OfficialPredictor

    h, w = args.image_size
    image = (np.random.default_rng(args.seed).random((h, w, 3)) * 255).astype(np.uint8)
    ours = SamPredictor(_build(args, plugins=False, model_type=model_type))
    device, why = _torch_device(ctx)
    official = None
    if device is not None:
        official = OfficialPredictor(build_official_sam(SAM_VARIANTS[model_type]).to(device))

    def run_ours():
        ours.set_image(image)
        jax.block_until_ready(ours.features)

    def run_official():
        with _torch_autocast(device, args.dtype):
            official.set_image(image)
        _torch_sync(device)

    first_s = _timed(run_ours, 1)[0]  # includes compilation
    for _ in range(args.warmup):
        run_ours()
        if official is not None:
            run_official()
    ours_times, official_times, ours_cpu, official_cpu = [], [], [], []
    for _ in range(args.iters):
        wall, cpu = _cpu_timed(run_ours)
        ours_times.append(wall)
        ours_cpu.append(cpu)
        if official is not None:
            wall, cpu = _cpu_timed(run_official)
            official_times.append(wall)
            official_cpu.append(cpu)
    record = {
        "bench": "set_image",
        "model_type": model_type,
        "image_hw": [h, w],
        "dtype": args.dtype,
        "attention_impl": args.attention_impl,
        "scan_blocks": args.scan_blocks,
        "jax_first_call_s": round(first_s, 2),
        "jax_ms_median": round(1e3 * statistics.median(ours_times), 1),
        "jax_ms_min": round(1e3 * min(ours_times), 1),
        "jax_cpu_ms_median": round(1e3 * statistics.median(ours_cpu), 1),
        "torch_ms_median": None,
        "torch_ms_min": None,
        "torch_cpu_ms_median": None,
        "jax_speedup": None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "iters": args.iters,
    }
    if official_times:
        record.update(
            torch_ms_median=round(1e3 * statistics.median(official_times), 1),
            torch_ms_min=round(1e3 * min(official_times), 1),
            torch_cpu_ms_median=round(1e3 * statistics.median(official_cpu), 1),
            jax_speedup=round(statistics.median(official_times) / statistics.median(ours_times), 3),
        )
    else:
        record["torch_skipped"] = why
    ctx.emit(record)
    return record


# ----------------------------------------------------------------------------- CLI


def _prompt_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--prompts wants counts like 1,16,64, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--prompts wants positive counts, got {text!r}")
    return counts


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--image-size wants HxW like 480x640, got {text!r}"
        ) from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--image-size wants positive sides, got {text!r}")
    return h, w


def parse_args(argv):
    from ..modeling import SAM_VARIANTS
    from ..modeling.image_encoder import ATTENTION_IMPLS

    p = argparse.ArgumentParser(
        prog="python -m stablesam_jax.bench",
        description="Encoder throughput, decoder latency and set_image speed (JSON lines).",
    )
    p.add_argument(
        "--model-type",
        choices=sorted(SAM_VARIANTS),
        default=None,
        help="default vit_h (vit_b with --set-image)",
    )
    p.add_argument("--batch", type=int, default=8, help="encoder batch size")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument(
        "--attention-impl",
        choices=ATTENTION_IMPLS,
        default="fast",
        help="'reference' is the official op order; 'fast' picks the best kernel per device",
    )
    p.add_argument(
        "--scan-blocks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run encoder blocks as lax.scan; default: on a GPU yes, on a CPU no (XLA:CPU "
        "compiles the scanned encoder more slowly than the unrolled one)",
    )
    p.add_argument("--plugins", action="store_true", help="also time decoding with Stable-SAM")
    p.add_argument(
        "--compare-torch",
        action="store_true",
        help="also time the official PyTorch SAM (same config, same device) and print ratios",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument(
        "--prompts",
        type=_prompt_counts,
        default=DEFAULT_PROMPT_COUNTS,
        help="decoder prompt counts, comma separated (default 1,16,64,256)",
    )
    p.add_argument(
        "--parts",
        default="encoder,decoder",
        help="what to time, comma separated: encoder, decoder",
    )
    p.add_argument(
        "--set-image",
        action="store_true",
        help="time SamPredictor.set_image end to end against the official predictor instead",
    )
    p.add_argument("--image-size", type=_image_size, default=(480, 640), help="HxW for --set-image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts or parts - {"encoder", "decoder"}:
        p.error(f"--parts takes encoder and/or decoder, got {args.parts!r}")
    args.parts = parts
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        p.error("--batch and --iters must be >= 1 and --warmup >= 0")
    if args.model_type is None:
        args.model_type = "vit_b" if args.set_image else "vit_h"
    if args.scan_blocks is None:
        import jax

        args.scan_blocks = jax.default_backend() != "cpu"
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    ctx = Context(args, argv)
    if args.set_image:
        bench_set_image(ctx, args.model_type)
        return 0
    jax_encoder, jax_decoder = None, []
    model = _build(args, plugins=False, model_type=args.model_type)
    if "encoder" in args.parts:
        jax_encoder = bench_encoder(ctx, model)
    if "decoder" in args.parts:
        jax_decoder += bench_decoder(ctx, model, plugins=False)
        if args.plugins:
            stable = _build(args, plugins=True, model_type=args.model_type)
            jax_decoder += bench_decoder(ctx, stable, plugins=True)
    if args.compare_torch:
        bench_torch(ctx, model.config, jax_encoder, jax_decoder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
