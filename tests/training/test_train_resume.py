"""Kill -9 a training process mid-run and restart it: it resumes from its last checkpoint, loses
no step, and its per-step losses equal those of an uninterrupted run with the same seed."""

import os
import signal
import subprocess
import time

import numpy as np
from train_helpers import read_metrics, run, shared_cache_dir, subprocess_env, train_command

from stablesam_jax import checkpoint as ckpt

# Point-sampled loss: the per-step RNG must be restored too, or the losses differ.
OVERRIDES = {
    "total_steps": 16,
    "checkpoint_every_steps": 4,
    "log_every_steps": 1,
    "batch_size": 2,
    "data.num_scenes": 12,  # several epochs: the reshuffle per epoch must resume too
    "loss.sampling": "points",
    "loss.num_points": 512,
}


def _metric_rows(workdir):
    path = os.path.join(workdir, "train_metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n"))


def test_killed_run_resumes_without_losing_a_step(tmp_path):
    env = subprocess_env(shared_cache_dir())
    reference_dir, workdir = str(tmp_path / "reference"), str(tmp_path / "killed")

    reference = run(train_command(reference_dir, "plugins", **OVERRIDES), env)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen(
        train_command(workdir, "plugins", **OVERRIDES), env=env, stdout=log, stderr=log
    )
    deadline = time.time() + 240
    while _metric_rows(workdir) < 10 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = _metric_rows(workdir)
    assert 10 <= killed_at < 16

    resumed = run(train_command(workdir, "plugins", **OVERRIDES), env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # It resumed from a checkpoint (4, 8 or a later one), not from scratch.
    assert "resuming from step" in resumed.stdout
    resumed_from = int(resumed.stdout.split("resuming from step ")[1].split()[0])
    assert resumed_from in (4, 8, 12) and resumed_from <= killed_at

    expected, got = read_metrics(reference_dir), read_metrics(workdir)
    assert [row["step"] for row in got] == list(range(1, 17))
    np.testing.assert_array_equal([row["loss"] for row in got], [row["loss"] for row in expected])
    np.testing.assert_array_equal(
        [row["grad_norm"] for row in got], [row["grad_norm"] for row in expected]
    )
    # The final plugin weights agree too.
    a, _ = ckpt.load(os.path.join(reference_dir, "export", "plugins"))
    b, _ = ckpt.load(os.path.join(workdir, "export", "plugins"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_cli_rejects_a_bad_config_naming_the_field(tmp_path):
    env = subprocess_env(shared_cache_dir())
    result = run(train_command(str(tmp_path / "run"), image_size=1024), env, timeout=120)
    assert result.returncode == 2
    assert "config.image_size=1024" in result.stderr and "vit_t" in result.stderr
