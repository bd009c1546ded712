"""The benchmark CLI: a tiny untimed smoke run with vit_t, the FLOP count, argument errors."""

import json
import os
import subprocess
import sys

import pytest

from stablesam_jax.commands import bench as bench_command
from stablesam_jax.modeling import SAM_VARIANTS
from stablesam_jax.tools import bench

TINY = ["--model-type", "vit_t", "--warmup", "0", "--iters", "1", "--seed", "1"]


def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.mark.torch_reference
def test_encoder_decoder_plugins_and_torch_lines(capsys):
    argv = [*TINY, "--batch", "1", "--dtype", "float32", "--prompts", "1,3"]
    assert bench_command.main([*argv, "--plugins", "--compare-torch"]) == 0
    lines = _lines(capsys)
    kinds = [(r["bench"], r["impl"], r.get("plugins"), r.get("prompts")) for r in lines]
    assert kinds == [
        ("encoder", "jax", None, None),
        ("decoder", "jax", False, 1),
        ("decoder", "jax", False, 3),
        ("decoder", "jax", True, 1),
        ("decoder", "jax", True, 3),
        ("encoder", "torch", None, None),
        ("decoder", "torch", False, 1),
        ("decoder", "torch", False, 3),
    ]
    encoder = lines[0]
    assert encoder["images_per_s"] > 0 and encoder["ms_per_batch"] > 0
    assert encoder["model_tflop_per_image"] > 0 and encoder["compile_s"] > 0
    assert encoder["share_of_peak"] is None  # no peak figure for a CPU
    assert encoder["attention_impl"] == "fast"
    assert encoder["scan_blocks"] is False  # the default on a CPU
    for record in lines:
        assert record["command"].startswith(
            "python -m stablesam_jax.commands.bench --model-type vit_t"
        )
        assert record["platform"] == "cpu" and record["date"]
    assert all(r["jax_speedup"] > 0 for r in lines if r["impl"] == "torch")


@pytest.mark.torch_reference
def test_set_image_against_official_predictor(capsys):
    argv = [*TINY, "--set-image", "--dtype", "float32", "--image-size", "60x90"]
    assert bench_command.main(argv) == 0
    (record,) = _lines(capsys)
    assert record["bench"] == "set_image" and record["model_type"] == "vit_t"
    assert record["image_hw"] == [60, 90]
    assert record["jax_ms_median"] > 0 and record["torch_ms_median"] > 0
    assert record["jax_speedup"] == pytest.approx(
        record["torch_ms_median"] / record["jax_ms_median"], rel=0.01
    )


def test_runs_as_a_module(repo_root):
    cmd = [sys.executable, "-m", "stablesam_jax.commands.bench", *TINY, "--parts", "decoder"]
    out = subprocess.run(
        [*cmd, "--prompts", "2", "--dtype", "bfloat16"],
        capture_output=True,
        text=True,
        cwd=repo_root,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert record["bench"] == "decoder" and record["prompts"] == 2
    assert record["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    "model_type,anchor_tflop", [("vit_b", 0.97), ("vit_l", 2.99), ("vit_h", 5.96)]
)
def test_encoder_flops_match_the_published_anchors(model_type, anchor_tflop):
    """The H100 baseline's published per-image encoder FLOPs (counted independently, 2 x MACs)."""
    flops = bench.encoder_flops(SAM_VARIANTS[model_type]) / 1e12
    assert flops == pytest.approx(anchor_tflop, rel=0.01)
    # The fast path skips projecting window padding: 4096 instead of 4900 tokens per image.
    fast = bench.encoder_flops(SAM_VARIANTS[model_type], windowed_projection_on_padding=False)
    assert 0.9 * flops * 1e12 < fast < flops * 1e12


def test_peak_table():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert bench.peak_tflops("NVIDIA H200", "float32") == 67.0
    assert bench.peak_tflops("cpu", "bfloat16") is None


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--prompts", "0,4"], "positive counts"),
        (["--prompts", "a"], "counts like"),
        (["--parts", "neck"], "--parts takes"),
        (["--image-size", "640"], "HxW like"),
        (["--iters", "0"], "--iters must be"),
    ],
)
def test_bad_arguments_name_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_command.parse_args(argv)
    assert message in capsys.readouterr().err
