"""The device check behind the README's GPU table: its dry run end to end through
bench/device_check.sh (the one call made on a GPU machine), the table it renders, the synthetic
training batch, and the command's refusals."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stablesam_jax import training
from stablesam_jax.commands import device_check as command
from stablesam_jax.tools import device_check
from stablesam_jax.tools.bench_train import synthetic_batch
from stablesam_jax.tools.device_table import markdown_table


def test_dry_run_through_the_shell_script(repo_root, tmp_path):
    out = tmp_path / "out"
    no_wheels = tmp_path / "wheels"  # whatever a developer keeps in .whl/ stays out of it
    no_wheels.mkdir()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHON": sys.executable,
        "DEVICE_CHECK_WHEELS": str(no_wheels),
    }
    result = subprocess.run(
        ["bash", "bench/device_check.sh", str(out), "--dry-run"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / device_check.JSON_FILE).read_text())
    assert results["dry_run"] is True
    assert [(s["stage"], s["status"]) for s in results["stages"]] == [
        (stage, "ok") for stage in device_check.STAGES
    ]
    by_kind: dict = {}
    for record in results["records"]:
        by_kind.setdefault((record["bench"], record.get("impl")), []).append(record)

    (check,) = by_kind[("fast_check", "jax")]
    tolerances = device_check.VIT_T_TOLERANCES
    # bf16 vs fp32 on vit_t: the CPU test's bounds (a broken fast path misses them by far).
    assert check["embedding_max_rel_diff"] <= tolerances["embedding"]
    assert check["logits_max_rel_diff"] <= tolerances["logits"]
    assert check["iou_max_abs_diff"] <= tolerances["iou"]
    assert check["mask_pixel_agreement"] >= tolerances["agreement"]

    (encoder,) = by_kind[("encoder", "jax")]
    assert encoder["model_type"] == "vit_t" and encoder["images_per_s"] > 0
    assert encoder["scan_blocks"] is True and encoder["dtype"] == "bfloat16"
    decoders = by_kind[("decoder", "jax")]
    plan = device_check.DRY_RUN
    assert sorted((r["plugins"], r["prompts"]) for r in decoders) == sorted(
        (plugins, n) for plugins in (False, True) for n in plan.prompts
    )
    (train,) = by_kind[("train_step", "jax")]
    assert train["trainable"] == "plugins" and train["num_trainable"] == 81_827
    assert train["per_device_batch"] == plan.train_per_device_batch
    assert np.isfinite(train["loss"]) and train["compile_s"] > 0

    if device_check.torch_available():
        assert [r["model_type"] for r in by_kind[("encoder", "torch")]] == ["vit_t"]
        assert len(by_kind[("decoder", "torch")]) == len(plan.prompts)
    else:
        assert "not installed" in results["torch_skipped"]

    table = (out / device_check.MARKDOWN_FILE).read_text()
    assert table in result.stdout  # printed, and written
    for row in ("vit_t encoder, bfloat16, batch 2", "box prompts, Stable-SAM", "train step"):
        assert row in table


def _results(records, stages=None, torch="2.13.0"):
    return {
        "dry_run": False,
        "plan": {"iters": 10, "warmup": 3},
        "environment": {
            "device": "NVIDIA H100 80GB HBM3",
            "device_count": 1,
            "platform": "gpu",
            "jax": "0.11.0",
            "date": "2026-12-01",
            "command": "python -m stablesam_jax.commands.device_check",
        },
        "torch": torch,
        "torch_skipped": None,
        "stages": stages or [],
        "records": records,
        "elapsed_s": 300.0,
        "peak_memory_bytes": 3 * 2**30,
    }


def test_table_rows_from_records():
    sam = {"bench": "decoder", "impl": "jax", "model_type": "vit_b", "compile_s": 2.0}
    records = [
        {
            "bench": "encoder",
            "impl": "jax",
            "model_type": "vit_h",
            "dtype": "bfloat16",
            "batch": 8,
            "images_per_s": 120.0,
            "ms_per_batch": 66.7,
            "achieved_tflops": 715.0,
            "share_of_peak": 0.723,
            "compile_s": 30.0,
            "program_argument_bytes": 2**30,
            "program_output_bytes": 2**29,
            "program_temp_bytes": 2**29,
        },
        {
            "bench": "encoder",
            "impl": "torch",
            "model_type": "vit_h",
            "images_per_s": 20.0,
            "peak_memory_bytes": 10 * 2**30,
            "jax_speedup": 6.0,
        },
        {**sam, "plugins": False, "prompts": 1, "ms_median": 1.0},
        {**sam, "plugins": False, "prompts": 64, "ms_median": 2.0},
        {**sam, "plugins": True, "prompts": 1, "ms_median": 1.5, "compile_s": 3.0},
        {**sam, "plugins": True, "prompts": 64, "ms_median": 2.1, "compile_s": 3.0},
        {"bench": "decoder", "impl": "torch", "prompts": 1, "ms_median": 4.0, "jax_speedup": 4.0},
    ]
    stages = [{"stage": "train", "status": "skipped", "reason": "430 s > budget 420.0 s"}]
    table = markdown_table(_results(records, stages))
    assert (
        "| vit_h encoder, bfloat16, batch 8 | 120 images/s (66.7 ms/batch, 715 TFLOP/s, 72.3% of "
        "peak); compile 30 s; program 2.0 GiB | 20 images/s; peak 10.0 GiB | 6x |"
    ) in table
    assert (
        "| decoder (vit_b), 1 / 64 box prompts, SAM | 1 / 2 ms; compile <= 2 s | 4 / - ms | 4x / - |"
    ) in table
    assert "| 1.5 / 2.1 ms (+50% / +5% vs SAM); compile <= 3 s | - | - |" in table
    assert "Stage `train`: skipped (430 s > budget 420.0 s)." in table
    assert "NVIDIA H100 80GB HBM3 x 1 (gpu), JAX 0.11.0, torch 2.13.0" in table


def test_synthetic_batch_is_shaped_like_the_pipelines():
    config = training.default_config()
    config.model_type = "vit_t"
    config.batch_size = 3
    config.data.source = "scenes"
    config.data.num_scenes = 4
    config.data.scene_size = 64
    real = next(training.iterate_batches(config))
    fake = synthetic_batch("vit_t", 3)
    assert set(fake) == set(training.DEVICE_FIELDS)
    for name in training.DEVICE_FIELDS:
        assert (fake[name].shape, fake[name].dtype) == (real[name].shape, real[name].dtype), name
    # One object per example, and each prompt kind present.
    assert fake["mask"].any(axis=(1, 2)).all()
    assert fake["box_valid"].any() and fake["mask_valid"].any()
    assert (fake["point_labels"] == 1).any()


def test_refuses_to_overwrite_an_earlier_run(tmp_path, capsys):
    (tmp_path / device_check.JSON_FILE).write_text("{}")
    assert command.main(["--out", str(tmp_path), "--dry-run"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / device_check.JSON_FILE).read_text() == "{}"


@pytest.mark.parametrize(
    "argv,message",
    [(["--stages", "neck"], "--stages takes some of"), (["--budget-s", "0"], "must be positive")],
)
def test_bad_arguments_name_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit):
        command.parse_args(argv)
    assert message in capsys.readouterr().err
