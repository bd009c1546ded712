"""`python -m stablesam_jax.eval` end to end: config file, overrides, two (fake CPU) devices."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.multidevice

EXPECTED_TYPES = ["gt_box", "noisy_box", "one_point", "three_points"]


def test_cli_on_two_devices_with_config_overrides(tmp_path, repo_root):
    env = dict(os.environ)
    # Two devices: 3 prompts and 3 images per encoder batch both need padding to a multiple of 2.
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    command = [
        sys.executable,
        "-m",
        "stablesam_jax.eval",
        "--config",
        os.path.join(repo_root, "eval", "configs", "scenes_smoke.py"),
        f"--config.output_dir={tmp_path}",
        "--config.datasets.scenes.num=3",
        "--config.datasets.scenes.size=64",
        "--config.num_prompts=3",
        "--config.image_batch_size=3",
    ]
    done = subprocess.run(
        command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "results.json").read_text())
    assert report["devices"]["count"] == 2
    assert report["protocol"]["num_prompts"] == 3
    assert report["protocol"]["prompt_types"] == EXPECTED_TYPES
    assert report["datasets"]["scenes"]["num_images"] == 3
    assert report["models"]["stable_sam"]["kind"] == "stable_sam"
    assert report["config"]["datasets"]["scenes"]["size"] == 64
    assert len(report["per_image"]["scenes"]["names"]) == 3
    pooled = report["results"]["pooled"]
    assert list(pooled) == ["sam", "stable_sam"]
    for prompt_type in EXPECTED_TYPES:
        sam, stable = pooled["sam"][prompt_type], pooled["stable_sam"][prompt_type]
        # Same SAM weights and fresh plugins: Stable-SAM must reproduce SAM exactly.
        for key in ("miou", "mbiou", "msf"):
            assert sam[key] == stable[key]
            assert 0.0 <= sam[key] <= 100.0
        assert 0.0 < stable["drp_a1"] < 1.0
    table = (tmp_path / "results.md").read_text()
    assert "## Pooled: scenes (3 images)" in table
    assert table in done.stdout
    assert "eval scenes: 3/3 images" in done.stderr
