"""TPU and CUDA readiness without the hardware: `jax.export` for a platform that is not present
only lowers (no compile), so a CPU proves that the image encoder (reference and fast path), the
prompt encoder + mask decoder with the Stable-SAM plugins and the sharded `plugins` train step
lower for "tpu" and "cuda" with nothing in them tied to the host: no custom call (a CPU-only
kernel, a host callback), no cuDNN picked because of the tracing machine.

Models are built abstractly (`nnx.eval_shape`): lowering needs shapes, not weights."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from train_helpers import run, subprocess_env

from stablesam_jax import builder, training
from stablesam_jax.modeling import ops
from stablesam_jax.serving import export as export_lib
from stablesam_jax.tools.bench_train import synthetic_batch
from stablesam_jax.training.trainer import jit_train_step

PLATFORMS = ("tpu", "cuda")
FAST = dict(dtype=jnp.bfloat16, attention_impl="fast", scan_blocks=True)
f32 = jnp.float32


def _abstract(build, **kwargs):
    return nnx.eval_shape(lambda: build("vit_t", **kwargs))


def _encoder_export(model, platforms, batch=2, **export_kwargs):
    graphdef, state = nnx.split(model.image_encoder)

    def encode(state, pixels):
        return nnx.merge(graphdef, state)(pixels)

    size = model.img_size
    pixels = jax.ShapeDtypeStruct((batch, size, size, 3), f32)
    return jax.export.export(jax.jit(encode), platforms=platforms, **export_kwargs)(state, pixels)


def _assert_portable(exported, platform):
    assert exported.platforms == (platform,)
    # A custom call ties the program to one backend's kernels (LAPACK, cuDNN, host callbacks);
    # jax.export's own shape checks of symbolic dimensions run everywhere.
    targets = set(re.findall(r"custom_call @(\w+)", exported.mlir_module()))
    assert targets <= {"shape_assertion"}, targets


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("path", ["reference", "fast"])
def test_image_encoder_lowers(platform, path):
    model = _abstract(builder.build_sam, **(FAST if path == "fast" else {}))
    exported = _encoder_export(model, (platform,))
    _assert_portable(exported, platform)
    (out,) = exported.out_avals
    assert out.shape == (2, 16, 16, 256)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_decoder_with_plugins_lowers(platform):
    model = _abstract(builder.build_stable_sam)
    graphdef, state = nnx.split(model)
    grid = model.config.image_embedding_size
    (n,) = jax.export.symbolic_shape("n")

    def decode(state, *prompts):
        low_res, iou, _ = nnx.merge(graphdef, state).decode_padded(*prompts, multimask_output=None)
        return low_res, iou

    prompts = [
        jax.ShapeDtypeStruct((1, grid, grid, 256), f32),
        jax.ShapeDtypeStruct((n, 3, 2), f32),
        jax.ShapeDtypeStruct((n, 3), jnp.int32),
        jax.ShapeDtypeStruct((n, 4), f32),
        jax.ShapeDtypeStruct((n,), jnp.bool_),
        jax.ShapeDtypeStruct((n, 4 * grid, 4 * grid), f32),
        jax.ShapeDtypeStruct((n,), jnp.bool_),
    ]
    exported = jax.export.export(jax.jit(decode), platforms=(platform,))(state, *prompts)
    _assert_portable(exported, platform)
    low_res, iou = exported.out_avals
    assert str(low_res.shape) == f"(n, 4, {4 * grid}, {4 * grid})" and str(iou.shape) == "(n, 4)"


def _train_step_inputs(mesh, batch_size):
    """The paper recipe's `plugins` step (its dtype and attention) on vit_t, all arguments
    abstract with the Trainer's shardings (weights replicated, batch split along "data")."""
    config = training.paper_config()
    config.model_type = "vit_t"
    model = _abstract(
        builder.build_stable_sam,
        dtype=training.DTYPES[config.dtype],
        attention_impl=config.attention_impl,
    )
    model_def, params, frozen = training.split_model(model, training.subset_filter("plugins"))
    schedule = training.make_schedule(config.optimizer, 10)
    optimizer = training.make_optimizer(config.optimizer, schedule)
    state = {
        "params": params,
        "opt_state": jax.eval_shape(optimizer.init, params),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    }

    def placed(tree, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
        )

    batch = jax.tree.map(np.asarray, synthetic_batch("vit_t", batch_size))
    settings = training.StepSettings.from_config(config)
    return (
        model_def,
        placed(state, P()),
        placed(frozen, P()),
        placed(batch, P("data")),
        optimizer,
        schedule,
        settings,
    )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_sharded_train_step_lowers(platform):
    mesh = training.make_mesh()
    exported = jax.export.export(jit_train_step(mesh), platforms=(platform,))(
        *_train_step_inputs(mesh, batch_size=2)
    )
    _assert_portable(exported, platform)
    state, metrics = exported.out_avals[:-1], exported.out_avals[-1]
    assert metrics.shape == () and len(state) > 0


_MULTIDEVICE = r"""
import json, sys
import jax
from jax.sharding import PartitionSpec as P
sys.path.insert(0, "tests")
from tools.test_lowering import _train_step_inputs
from stablesam_jax import training
from stablesam_jax.training.trainer import jit_train_step

assert jax.device_count() == 8, jax.devices()
mesh = training.make_mesh()
report = {}
for platform in ("tpu",):
    exported = jax.export.export(jit_train_step(mesh), platforms=(platform,))(
        *_train_step_inputs(mesh, batch_size=16)
    )
    # An input the step never reads (the prompt kind) has no sharding.
    kinds = [
        "unused" if s is None else {P(): "replicated", P("data"): "data"}.get(s.spec, str(s.spec))
        for s in exported.in_shardings_jax(mesh)
    ]
    fields = sorted(training.DEVICE_FIELDS)  # the batch: the last arguments, keys sorted
    report[platform] = {
        "nr_devices": exported.nr_devices,
        "custom_calls": exported.mlir_module().count("custom_call"),
        "weights_and_state": sorted(set(kinds[: -len(fields)])),
        "batch": dict(zip(fields, kinds[-len(fields) :])),
    }
print("REPORT " + json.dumps(report))
"""


@pytest.mark.multidevice
def test_sharded_train_step_lowers_for_8_devices(repo_root):
    env = subprocess_env(extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    result = run([sys.executable, "-c", _MULTIDEVICE], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")][-1]
    report = json.loads(line[len("REPORT ") :])
    for platform in ("tpu",):
        lowered = report[platform]
        assert lowered["nr_devices"] == 8 and lowered["custom_calls"] == 0
        # Every weight and state leaf replicated, the batch split along "data".
        assert lowered["weights_and_state"] == ["replicated"], lowered
        batch = lowered["batch"]
        assert batch.pop("kind") == "unused"
        assert set(batch.values()) == {"data"}, lowered


# ----------------------------------------------------------------------------- cuDNN on a GPU host

_FAKE_CUDNN = "fake_cudnn_attention"


@pytest.fixture
def as_if_on_a_gpu(monkeypatch):
    """The tracing host looks like a Hopper GPU: the fast path picks cuDNN's fused attention,
    here a stand-in primitive that, like the real one, lowers for CUDA only."""
    primitive = Primitive(_FAKE_CUDNN)
    primitive.def_abstract_eval(lambda x: x)
    mlir.register_lowering(primitive, jax.ffi.ffi_lowering(_FAKE_CUDNN), platform="cuda")
    xla_attention = jax.nn.dot_product_attention

    def attention(*args, implementation=None, **kwargs):
        if implementation != "cudnn":
            return xla_attention(*args, implementation=implementation, **kwargs)
        return primitive.bind(xla_attention(*args, implementation="xla", **kwargs))

    monkeypatch.setattr(ops, "cudnn_attention_head_dim_limit", lambda device=None: 256)
    monkeypatch.setattr(jax.nn, "dot_product_attention", attention)


def test_cudnn_attention_is_chosen_per_lowering_platform(as_if_on_a_gpu):
    model = _abstract(builder.build_sam, **FAST)
    allow = [jax.export.DisabledSafetyCheck.custom_call(_FAKE_CUDNN)]
    cuda = _encoder_export(model, ("cuda",), disabled_checks=allow).mlir_module()
    assert _FAKE_CUDNN in cuda  # a GPU's program keeps the fused kernel
    for platform in ("tpu", "cpu"):
        _assert_portable(_encoder_export(model, (platform,)), platform)


def test_multi_platform_export_of_a_cudnn_encoder_says_what_to_do(as_if_on_a_gpu, tmp_path):
    model = _abstract(builder.build_sam, **FAST)
    with pytest.raises(ValueError, match=r"platforms=\('cuda',\) alone"):
        export_lib.export_model(model, str(tmp_path), platforms=("cpu", "cuda"))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- serving export


def _filled(model, seed=0):
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            var.set_value(jnp.asarray(0.05 * rng.standard_normal(var.shape), var.dtype))
    return model


def test_export_model_default_platforms_include_tpu(tmp_path):
    """The fast path with a symbolic batch: the CPU-only chunking of attention must stay out of
    the other platforms' code and out of the way of a batch size unknown at export."""
    assert export_lib.DEFAULT_PLATFORMS == ("cpu", "cuda", "tpu")
    model = _filled(_abstract(builder.build_stable_sam, **FAST))
    manifest = export_lib.export_model(model, str(tmp_path))
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
    encoder = jax.export.deserialize((tmp_path / "encoder.jaxexport").read_bytes())
    assert encoder.platforms == ("cpu", "cuda", "tpu")
    assert str(encoder.in_avals[-1].shape) == "(b, 256, 256, 3)"


@pytest.mark.parametrize(
    "platforms,message", [(("gpu",), '"gpu" is "cuda" or "rocm"'), ((), "give one or more")]
)
def test_export_model_names_the_supported_platforms(platforms, message, tmp_path):
    model = _abstract(builder.build_sam)
    with pytest.raises(ValueError, match=message):
        export_lib.export_model(model, str(tmp_path), platforms=platforms)
