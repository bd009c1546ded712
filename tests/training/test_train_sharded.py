"""Data parallelism on 8 fake CPU devices: the sharded step equals the single-device step.

XLA_FLAGS must be set before JAX starts, and this pytest process may already run JAX, so the
comparison runs in a subprocess (the script below) and reports JSON."""

import json
import sys

import pytest
from train_helpers import run, shared_cache_dir, subprocess_env

pytestmark = pytest.mark.multidevice

SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from train_helpers import tiny_config
from stablesam_jax import training
from stablesam_jax.builder import build_stable_sam

assert jax.device_count() == 8, jax.devices()
# Adam with eps=1 and lr=1 steps by g / (|g| + 1): linear in small gradients, so the comparison
# measures gradient agreement instead of Adam's sign-like first step, which turns summation-order
# noise in near-zero gradients into lr-sized differences.
config = tiny_config(
    "plugins",
    batch_size=8,
    **{"loss.sampling": "points", "loss.num_points": 256, "optimizer.learning_rate": 1.0,
       "optimizer.eps": 1.0},
)
model = build_stable_sam("vit_t", seed=0)
batch = next(training.iterate_batches(config))
single = training.Trainer(config, model, mesh=training.make_mesh(jax.devices()[:1]))
initial = {k: np.asarray(v) for k, v in single.state["params"].items()}
sharded = training.Trainer(config, model, mesh=training.make_mesh(jax.devices()))
on_devices = sharded.put_batch(batch)
shards = on_devices["image"].addressable_shards
report = {
    "num_shards": len(shards),
    "shard_batch": [s.data.shape[0] for s in shards],
    "distinct_devices": len({s.device for s in shards}),
    "losses": [],
}
for _ in range(3):
    a = single.step(single.put_batch(batch))
    b = sharded.step(sharded.put_batch(batch))
    report["losses"].append([float(a["loss"]), float(b["loss"])])
    report.setdefault("grad_norms", []).append([float(a["grad_norm"]), float(b["grad_norm"])])
pa, pb = single.state["params"], sharded.state["params"]
report["param_sharding_replicated"] = all(v.sharding.is_fully_replicated for v in pb.values())
report["max_param_diff"] = max(float(np.max(np.abs(np.asarray(pa[k]) - np.asarray(pb[k])))) for k in pa)
report["max_param_change"] = max(float(np.max(np.abs(np.asarray(pb[k]) - initial[k]))) for k in pb)
print("REPORT " + json.dumps(report))
"""


def test_sharded_step_equals_single_device_step(tmp_path):
    env = subprocess_env(
        shared_cache_dir(), {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    )
    result = run([sys.executable, "-c", SCRIPT], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")][-1]
    report = json.loads(line[len("REPORT ") :])
    # The batch of 8 really is split, one example per device.
    assert report["num_shards"] == 8 and report["distinct_devices"] == 8
    assert report["shard_batch"] == [1] * 8
    assert report["param_sharding_replicated"]
    for single, sharded in report["losses"] + report["grad_norms"]:
        assert abs(single - sharded) <= 1e-5 * max(1.0, abs(single)), report
    assert report["max_param_change"] > 1e-4
    assert report["max_param_diff"] < 1e-4 * report["max_param_change"], report
