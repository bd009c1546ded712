"""Two JAX processes on localhost (jax.distributed, CPU, one device each) train together: global
batch split over the processes, one checkpoint with both processes' data-iterator states, one
export."""

import os
import subprocess

import numpy as np
import pytest
from train_helpers import free_port, read_metrics, shared_cache_dir, subprocess_env, train_command

from stablesam_jax import checkpoint as ckpt

pytestmark = pytest.mark.multidevice


def test_two_process_run_completes(tmp_path):
    port = free_port()
    workdir = str(tmp_path / "run")
    env = subprocess_env(shared_cache_dir())
    processes = []
    for process_id in range(2):
        command = train_command(
            workdir,
            "plugins",
            total_steps=4,
            batch_size=4,
            checkpoint_every_steps=2,
            log_every_steps=1,
            **{
                "data.num_scenes": 8,
                "distributed.coordinator_address": f"localhost:{port}",
                "distributed.num_processes": 2,
                "distributed.process_id": process_id,
            },
        )
        log = open(tmp_path / f"process_{process_id}.log", "w")
        processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=log), log))
    try:
        codes = [p.wait(timeout=300) for p, _ in processes]
    finally:
        for p, log in processes:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(text[-3000:] for text in logs)

    assert "over 2 process(es); global batch 4, 2 per device" in logs[0]
    rows = read_metrics(workdir)  # written by process 0 only
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(row["loss"]) for row in rows)

    checkpoint_steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
    assert checkpoint_steps == [2, 4]
    data_state = os.path.join(workdir, "checkpoints", "4", "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_state))

    flat, meta = ckpt.load(os.path.join(workdir, "export", "plugins"))
    assert meta["kind"] == "plugins" and meta["model_type"] == "vit_t"
    assert all(np.isfinite(v).all() for v in flat.values())
