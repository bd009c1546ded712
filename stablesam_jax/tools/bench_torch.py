"""The benchmark's official PyTorch side: the official SAM with the same config on the same kind
of device, and `SamPredictor.set_image` against the official predictor.

Needs torch and `segment-anything` (the `dev` extra); `stablesam_jax.tools.bench` does not.
"""

from __future__ import annotations

import contextlib
import statistics

import jax
import numpy as np
import torch

from ..modeling import SAM_VARIANTS
from ..predictor import SamPredictor
from . import official_hq
from .bench import Context, boxes_for, build_model, cpu_cores, cpu_timed, ms_stats, timed
from .official import build_official_sam, import_official_modeling, install_torchvision_stand_in


def torch_device(ctx: Context) -> tuple[str | None, str]:
    """The torch device matching JAX's, or (None, why not)."""
    if ctx.device.platform == "cpu":
        # The cores this process may use (`taskset`), the same budget XLA gets.
        torch.set_num_threads(cpu_cores())
        return "cpu", ""
    if ctx.device.platform == "gpu" and torch.cuda.is_available():
        return "cuda", ""
    return None, f"torch has no device matching JAX's {ctx.device.platform} here"


def _autocast(device: str, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _base_record() -> dict:
    return {"impl": "torch", "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _encoder(ctx: Context, sam, config, device: str, jax_encoder: dict) -> None:
    settings = ctx.settings
    x = torch.randn(settings.batch, 3, config.img_size, config.img_size, device=device)

    def encode():
        with torch.inference_mode(), _autocast(device, settings.dtype):
            sam.image_encoder(x)
        _sync(device)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(settings.warmup):
        encode()
    times = timed(encode, settings.iters)
    median = statistics.median(times)
    ctx.emit(
        {
            "bench": "encoder",
            **_base_record(),
            "model_type": jax_encoder["model_type"],
            "batch": settings.batch,
            "dtype": settings.dtype,
            "images_per_s": round(settings.batch / median, 3),
            "ms_per_batch": round(1e3 * median, 3),
            "ms_per_batch_min": round(1e3 * min(times), 3),
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
            "jax_speedup": round(jax_encoder["images_per_s"] / (settings.batch / median), 3),
            "iters": settings.iters,
        }
    )


def _decoder(ctx: Context, sam, config, device: str, jax_decoder: list[dict]) -> None:
    settings = ctx.settings
    grid = config.img_size // config.patch_size
    emb = torch.randn(1, config.prompt_embed_dim, grid, grid, device=device)
    for jax_record in jax_decoder:
        if jax_record["plugins"]:
            continue  # the official SAM has no plugins
        n = jax_record["prompts"]
        boxes = torch.from_numpy(boxes_for(n, config.img_size, settings.seed + n)).to(device)

        def decode(boxes=boxes):
            with torch.inference_mode(), _autocast(device, settings.dtype):
                sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
                sam.mask_decoder(
                    image_embeddings=emb,
                    image_pe=sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
            _sync(device)

        for _ in range(settings.warmup):
            decode()
        stats = ms_stats(timed(decode, settings.iters))
        ctx.emit(
            {
                "bench": "decoder",
                **_base_record(),
                "model_type": jax_record["model_type"],
                "plugins": False,
                "prompts": n,
                "dtype": settings.dtype,
                **stats,
                "jax_speedup": round(stats["ms_median"] / jax_record["ms_median"], 3),
                "iters": settings.iters,
            }
        )


def bench_torch(ctx: Context, config, jax_encoder: dict | None, jax_decoder: list[dict]) -> None:
    """The official PyTorch SAM with the same config, same process, same kind of device: the
    encoder if JAX's was timed, and the decoder for each prompt count JAX's plugin-free decoder
    was timed at; each line carries JAX's speedup."""
    device, why = torch_device(ctx)
    if device is None:
        ctx.emit({"bench": "torch", "skipped": why})
        return
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what the anchors measured
        torch.backends.cudnn.allow_tf32 = True
    sam = build_official_sam(config).to(device)
    if jax_encoder is not None:
        _encoder(ctx, sam, config, device, jax_encoder)
    _decoder(ctx, sam, config, device, jax_decoder)
    if device == "cuda":
        # Back to the GPU, for whatever runs next in this process (JAX's next model, say).
        del sam
        torch.cuda.empty_cache()


def _official_predictor(device: str | None, model_type: str):
    install_torchvision_stand_in()
    import_official_modeling()
    # The official predictor module imports torchvision: only after the stand-in is installed.
    from segment_anything.predictor import SamPredictor as OfficialPredictor

    if device is None:
        return None
    config = SAM_VARIANTS[model_type]
    if config.hq or config.tiny_vit:  # HQ-SAM / MobileSAM: the segment-anything-hq package
        return official_hq.official_predictor(
            official_hq.build_official_hq_sam(config).to(device), config
        )
    return OfficialPredictor(build_official_sam(config).to(device))


def _alternating_times(run_ours, run_official, settings) -> tuple[list, list, list, list]:
    """(ours wall, ours CPU, official wall, official CPU) seconds, the calls alternating."""
    ours_times, official_times, ours_cpu, official_cpu = [], [], [], []
    for _ in range(settings.iters):
        wall, cpu = cpu_timed(run_ours)
        ours_times.append(wall)
        ours_cpu.append(cpu)
        if run_official is not None:
            wall, cpu = cpu_timed(run_official)
            official_times.append(wall)
            official_cpu.append(cpu)
    return ours_times, ours_cpu, official_times, official_cpu


def bench_set_image(ctx: Context, model_type: str) -> dict:
    """`SamPredictor.set_image` end to end (resize, normalize, encode, result on the device) for
    ours and the official predictor, on one image; calls alternate between the two so load from
    other processes hits both alike."""
    settings = ctx.settings
    h, w = settings.image_size
    image = (np.random.default_rng(settings.seed).random((h, w, 3)) * 255).astype(np.uint8)
    ours = SamPredictor(build_model(settings, plugins=False, model_type=model_type))
    device, why = torch_device(ctx)
    official = _official_predictor(device, model_type)

    def run_ours():
        ours.set_image(image)
        jax.block_until_ready(ours.features)

    def run_official():
        with _autocast(device, settings.dtype):
            official.set_image(image)
        _sync(device)

    first_s = timed(run_ours, 1)[0]  # includes compilation
    for _ in range(settings.warmup):
        run_ours()
        if official is not None:
            run_official()
    ours_times, ours_cpu, official_times, official_cpu = _alternating_times(
        run_ours, run_official if official is not None else None, settings
    )
    record = {
        "bench": "set_image",
        "model_type": model_type,
        "image_hw": [h, w],
        "dtype": settings.dtype,
        "attention_impl": settings.attention_impl,
        "scan_blocks": settings.scan_blocks,
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
        "iters": settings.iters,
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
