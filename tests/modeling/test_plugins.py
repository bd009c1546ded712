"""Stable-SAM plugins: the sampler, identity at initialization, frozen SAM, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stablesam_jax import SamPredictor, build_sam, build_stable_sam
from stablesam_jax.builder import save_merged, save_plugins
from stablesam_jax.checkpoint import flat_weights, is_plugin_weight, is_sam_weight
from stablesam_jax.modeling import ops, sampling, transformer
from stablesam_jax.modeling.common import Conv, PluginParam, depthwise_conv_same, gelu
from stablesam_jax.modeling.plugins import PluginConfig
from stablesam_jax.modeling.transformer import TwoWayAttentionBlock
from stablesam_jax.training.trainable import TRAINABLE_SUBSETS

# ----------------------------------------------------------------------------- sampler


def test_sampler_is_exact_at_zero_offsets():
    feats = jax.random.normal(jax.random.key(0), (7, 9, 5))
    out = ops.bilinear_sample(feats, ops.reference_grid(7, 9))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(feats))  # bit for bit


def _grid_sample(feats, positions):
    """torch grid_sample(align_corners=True, zeros) at the same places: an independent bilinear."""
    torch = pytest.importorskip("torch")  # only these comparisons need it (not on Python 3.12)
    h, w, _ = feats.shape
    y, x = positions[..., 0], positions[..., 1]
    grid = np.stack([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], -1)[None]
    t_feats = torch.tensor(np.asarray(feats).transpose(2, 0, 1)[None], requires_grad=True)
    t_grid = torch.tensor(grid, requires_grad=True)
    out = torch.nn.functional.grid_sample(
        t_feats, t_grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out, t_feats, t_grid


@pytest.mark.torch_reference
def test_sampler_matches_grid_sample_inside_and_outside():
    rng = np.random.default_rng(0)
    h, w, c = 6, 8, 4
    feats = rng.standard_normal((h, w, c)).astype(np.float32)
    # Fractional positions from well outside the map (-2.5) to well beyond it (+2.5 cells).
    positions = np.stack(
        [rng.uniform(-2.5, h + 1.5, (10, 12)), rng.uniform(-2.5, w + 1.5, (10, 12))], -1
    ).astype(np.float32)
    assert (positions[..., 0] < 0).any() and (positions[..., 1] > w - 1).any()
    ref, _, _ = _grid_sample(feats, positions)
    got = ops.bilinear_sample(jnp.asarray(feats), jnp.asarray(positions))
    np.testing.assert_allclose(
        np.asarray(got), ref[0].detach().numpy().transpose(1, 2, 0), atol=1e-5
    )


@pytest.mark.torch_reference
def test_sampler_gradients_match_finite_differences_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    h, w, c = 5, 6, 3
    feats = rng.standard_normal((h, w, c)).astype(np.float32)
    # Away from integer coordinates, where bilinear interpolation is differentiable.
    base = np.stack(np.meshgrid(np.arange(4), np.arange(5), indexing="ij"), -1) - 1.0
    positions = (base + rng.uniform(0.2, 0.8, base.shape)).astype(np.float32)
    weights = rng.standard_normal((4, 5, c)).astype(np.float32)

    def loss(f, p):
        return jnp.sum(ops.bilinear_sample(f, p) * weights)

    g_feats, g_pos = jax.grad(loss, argnums=(0, 1))(jnp.asarray(feats), jnp.asarray(positions))
    eps = 1e-2
    f64, p64 = feats.astype(np.float64), positions.astype(np.float64)

    def loss64(f, p):
        return float(loss(jnp.asarray(f, jnp.float32), jnp.asarray(p, jnp.float32)))

    for idx in [(0, 0, 0), (2, 3, 1), (4, 5, 2), (1, 1, 0)]:
        fp, fm = f64.copy(), f64.copy()
        fp[idx] += eps
        fm[idx] -= eps
        fd = (loss64(fp, p64) - loss64(fm, p64)) / (2 * eps)
        assert abs(fd - float(g_feats[idx])) < 2e-3 * max(1, abs(fd)), idx
    for idx in [(0, 0, 0), (1, 2, 1), (3, 4, 0), (2, 1, 1)]:
        pp, pm = p64.copy(), p64.copy()
        pp[idx] += eps
        pm[idx] -= eps
        fd = (loss64(f64, pp) - loss64(f64, pm)) / (2 * eps)
        assert abs(fd - float(g_pos[idx])) < 2e-3 * max(1, abs(fd)), idx

    ref, t_feats, t_grid = _grid_sample(feats, positions)
    (ref[0] * torch.tensor(weights.transpose(2, 0, 1))).sum().backward()
    np.testing.assert_allclose(
        np.asarray(g_feats), t_feats.grad[0].numpy().transpose(1, 2, 0), atol=1e-5
    )
    # torch's grid is normalized: d/dy = d/dgrid_y * 2 / (h - 1), likewise x.
    t_g = t_grid.grad[0].numpy()
    np.testing.assert_allclose(np.asarray(g_pos[..., 0]), t_g[..., 1] * 2 / (h - 1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(g_pos[..., 1]), t_g[..., 0] * 2 / (w - 1), atol=1e-4)


# ----------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(2).random((200, 260, 3)) * 255).astype(np.uint8)


PROMPTS = {
    "box": dict(box=np.array([30, 20, 200, 150.0])),
    "points": dict(point_coords=np.array([[60, 50], [150, 120.0]]), point_labels=np.array([1, 0])),
    "mask": dict(
        point_coords=np.array([[100, 100.0]]),
        point_labels=np.array([1]),
        mask_input=np.random.default_rng(3)
        .standard_normal((1, 64, 64))
        .astype(np.float32),  # vit_t: 4 x 16
    ),
}


@pytest.mark.parametrize(
    "options", [{}, {"use_drp": False}, {"dsp_layers": (0, 1)}, {"routing": "sigmoid"}]
)
def test_fresh_stable_sam_equals_sam(image, options):
    sam = build_sam("vit_t", seed=4)
    stable = build_stable_sam("vit_t", seed=4, **options)
    # Building Stable-SAM never changes a SAM weight.
    a, b = flat_weights(sam, is_sam_weight), flat_weights(stable, is_sam_weight)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    p_sam, p_stable = SamPredictor(sam), SamPredictor(stable)
    p_sam.set_image(image)
    p_stable.set_image(image)
    for name, kwargs in PROMPTS.items():
        for multimask in (True, False):
            ref = p_sam.predict(**kwargs, multimask_output=multimask, return_logits=True)
            got = p_stable.predict(**kwargs, multimask_output=multimask, return_logits=True)
            for r, g in zip(ref, got):
                # Float precision: a1 * x + a2 * x with a1 + a2 = 1 rounds, nothing more.
                assert np.abs(g - r).max() <= 1e-4 * np.abs(r).max(), name


def test_moved_offsets_change_the_output(image):
    """The identity above is not vacuous: with non-zero offsets the masks change."""
    sam, stable = build_sam("vit_t", seed=4), build_stable_sam("vit_t", seed=4)
    dsp = stable.mask_decoder.transformer.layers[1].dsp
    dsp.offset.kernel[...] = 0.05 * jax.random.normal(jax.random.key(0), dsp.offset.kernel.shape)
    p_sam, p_stable = SamPredictor(sam), SamPredictor(stable)
    p_sam.set_image(image)
    p_stable.set_image(image)
    ref = p_sam.predict(**PROMPTS["box"], return_logits=True)[0]
    got = p_stable.predict(**PROMPTS["box"], return_logits=True)[0]
    assert np.abs(ref - got).max() > 1e-3 * np.abs(ref).max()


def test_introspection(image):
    stable = build_stable_sam("vit_t", seed=5)
    predictor = SamPredictor(stable)
    predictor.set_image(image)
    *_, inter = predictor.predict(**PROMPTS["box"], return_intermediates=True)
    alpha = inter["layer1/drp_alpha"]
    assert alpha.shape == (2,) and abs(alpha.sum() - 1.0) < 1e-6  # softmax x scale 1
    np.testing.assert_array_equal(inter["layer1/dsp_positions"], ops.reference_grid(16, 16))
    attn = inter["layer1/token_to_image_attn"]  # [heads, tokens, H*W]
    assert attn.shape == (8, 5 + 2, 256)
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- training subsets


def _decoder_loss(model, embeddings, boxes, target):
    sparse, dense = model.prompt_encoder(None, boxes, None)
    logits, _, _ = model.mask_decoder(
        embeddings, model.prompt_encoder.get_dense_pe(), sparse, dense, False
    )
    return optax.sigmoid_binary_cross_entropy(logits[:, 0], target).mean()


@pytest.mark.parametrize("subset", ["plugins", "decoder", "prompt_tokens"])
def test_one_step_moves_only_the_subset(subset):
    model = build_stable_sam("vit_t", seed=6) if subset == "plugins" else build_sam("vit_t", seed=6)
    trainable = TRAINABLE_SUBSETS[subset]
    before = flat_weights(model, lambda p, v: isinstance(v, nnx.Variable))
    chosen = {k for k, _ in flat_weights(model, trainable).items()}
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable)
    rng = np.random.default_rng(7)
    embeddings = jnp.asarray(rng.standard_normal((2, 16, 16, 256)), jnp.float32)
    boxes = jnp.asarray([[20, 30, 120, 160], [60, 40, 200, 220]], jnp.float32)
    target = jnp.asarray(rng.random((2, 64, 64)) > 0.5, jnp.float32)

    @nnx.jit
    def step(model, optimizer):
        diff = nnx.DiffState(0, trainable)
        loss, grads = nnx.value_and_grad(_decoder_loss, argnums=diff)(
            model, embeddings, boxes, target
        )
        optimizer.update(model, grads)
        return loss

    step(model, optimizer)
    after = flat_weights(model, lambda p, v: isinstance(v, nnx.Variable))
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved and moved <= chosen, sorted(moved - chosen)[:5]
    # Optimizer state exists for the trainable subset only.
    n_opt = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(optimizer.opt_state)))
    n_trainable = sum(before[k].size for k in chosen)
    assert n_opt <= 2 * n_trainable + 16
    if subset == "plugins":
        assert "mask_decoder.transformer.layers.1.dsp.offset.kernel" in moved
        assert "mask_decoder.transformer.layers.1.drp.scale" in moved


def _count_linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def test_parameter_counts_for_all_sizes():
    c, hidden = 256, 32
    dsp = _count_linear(c, c) + (25 * c + c) + 2 * c + _count_linear(c, 2, bias=False)
    drp = _count_linear(c, hidden) + 2 * hidden + _count_linear(hidden, 2) + 1
    assert (dsp, drp) == (73_472, 8_355)  # the design's budget, "about 0.08 M"
    prompt_tokens = c + 4 * c + 2 * _count_linear(c, c) + _count_linear(c, c // 8)
    for model_type in ("vit_b", "vit_l", "vit_h"):
        model = nnx.eval_shape(lambda mt=model_type: build_stable_sam(mt))
        counts = {
            name: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model, f)))
            for name, f in TRAINABLE_SUBSETS.items()
        }
        assert counts["plugins"] == dsp + drp, model_type
        assert counts["prompt_tokens"] == prompt_tokens, model_type


# ----------------------------------------------------------------------------- checkpoints


def test_plugin_checkpoint_round_trip_and_merged_export(tmp_path, image):
    stable = build_stable_sam("vit_t", seed=8, offset_scale=2.5)
    layer = stable.mask_decoder.transformer.layers[1]
    layer.dsp.offset.kernel[...] = 0.05 * jax.random.normal(
        jax.random.key(1), layer.dsp.offset.kernel.shape
    )
    layer.drp.scale[...] = jnp.asarray(1.3)
    plugin_dir = save_plugins(stable, str(tmp_path / "plugins"))
    size = sum(f.stat().st_size for f in (tmp_path / "plugins").rglob("*") if f.is_file())
    assert size < 1_000_000, size  # 81,827 floats, separate from SAM's weights
    reloaded = build_stable_sam("vit_t", seed=8, plugins=plugin_dir)
    assert reloaded.plugin_config.offset_scale == 2.5  # stored options come back
    for k, v in flat_weights(stable, is_plugin_weight).items():
        np.testing.assert_array_equal(flat_weights(reloaded, is_plugin_weight)[k], v)

    merged_dir = save_merged(stable, str(tmp_path / "merged"))
    merged = build_stable_sam("vit_t", checkpoint=merged_dir, seed=99)
    p1, p2 = SamPredictor(stable), SamPredictor(merged)
    p1.set_image(image)
    p2.set_image(image)
    np.testing.assert_array_equal(
        p1.predict(**PROMPTS["box"], return_logits=True)[0],
        p2.predict(**PROMPTS["box"], return_logits=True)[0],
    )


# ----------------------------------------------------------------------------- the fast path
#
# The decoder resamples SAM's projected keys and values once per block (linearity of the
# sampler) with shifted-sum convolutions and row gathers; these compare it with the paper's
# form written out plainly: XLA's grouped convolution, `ops.bilinear_sample` (checked against
# torch above) on the features and on the positional encoding, the DRP mix, then SAM's
# attention on the mixed maps.


def test_depthwise_conv_matches_grouped_convolution():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.standard_normal((2, 7, 9, 6)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((5, 5, 1, 6)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(6), jnp.float32)
    ref = jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        [(2, 2)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=6,
        precision=jax.lax.Precision.HIGHEST,
    )
    np.testing.assert_allclose(
        depthwise_conv_same(x, kernel, bias), ref + bias, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(depthwise_conv_same(x, kernel, None), ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"odd square depthwise kernel \(k, k, 1, 6\)"):
        depthwise_conv_same(x, kernel[:4, :4], None)


def test_row_gathers_match_the_sampler_inside_and_outside():
    rng = np.random.default_rng(11)
    h, w, c = 6, 8, 5
    feats = jnp.asarray(rng.standard_normal((h, w, c)), jnp.float32)
    positions = np.stack(
        [rng.uniform(-2.5, h + 1.5, (9, 11)), rng.uniform(-2.5, w + 1.5, (9, 11))], -1
    )
    positions = jnp.asarray(positions, jnp.float32)
    indices, weights = sampling.bilinear_corners(positions, (h, w))
    got = sampling.gather_bilinear(feats.reshape(h * w, c), indices, weights)
    np.testing.assert_allclose(got, ops.bilinear_sample(feats, positions), atol=1e-6)
    grid = ops.reference_grid(h, w)
    exact = sampling.gather_bilinear(
        feats.reshape(h * w, c), *sampling.bilinear_corners(grid, (h, w))
    )
    np.testing.assert_array_equal(exact, feats)  # integer positions: the stored rows, bit for bit


def _randomized_block(seed, **plugin_options):
    """A small two-way block with plugins, every plugin weight random and non-zero."""
    plugins = PluginConfig(seed=seed, **plugin_options)
    block = TwoWayAttentionBlock(32, 4, 48, 2, rngs=nnx.Rngs(seed), plugins=plugins, layer_index=1)
    state = nnx.state(block, PluginParam)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    # Offsets of several cells (saturating tanh for some), crossing the border; DRP's scale
    # away from 1, so a1 + a2 != 1 and the biases' place matters.
    noisy = [v + 0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)]
    nnx.update(block, jax.tree_util.tree_unflatten(treedef, noisy))
    return block


def _reference_block(block, queries, keys, query_pe, key_pe, hw):
    """The two-way block with Stable-SAM's Eq. 4-6 as written: sample x_p and PE, mix, attend."""
    dsp, drp = block.dsp, block.drp
    b, h, w = keys.shape[0], *hw
    q = queries + query_pe
    queries = block.norm1(queries + block.self_attn(q, q, queries))
    x_p = keys.reshape(b, h, w, -1)
    pe = jnp.broadcast_to(key_pe, keys.shape).reshape(b, h, w, -1)
    projected = dsp.proj(x_p)
    raw = dsp.offset(gelu(dsp.norm(dsp.dwconv(projected))))
    unclamped = ops.reference_grid(h, w)[None] + dsp.offset_scale * jnp.tanh(raw)
    positions = unclamped
    if dsp.padding == "border":  # the paper: p + dp within (0, 0)..(H - 1, W - 1)
        positions = jnp.stack(
            [jnp.clip(unclamped[..., 0], 0, h - 1), jnp.clip(unclamped[..., 1], 0, w - 1)], -1
        )
    source = x_p if dsp.sample == "raw" else projected
    sampled = jax.vmap(ops.bilinear_sample)(source, positions)
    sampled_pe = jax.vmap(ops.bilinear_sample)(pe, positions)
    alpha = None
    if drp is not None:
        alpha = drp(queries[:, 1, :])
        a1, a2 = alpha[:, 0, None, None, None], alpha[:, 1, None, None, None]
        sampled, sampled_pe = a1 * sampled + a2 * x_p, a1 * sampled_pe + a2 * pe
    mixed, mixed_pe = sampled.reshape(keys.shape), sampled_pe.reshape(keys.shape)
    q = queries + query_pe
    attn_out, weights = block.cross_attn_token_to_image(
        q, mixed + mixed_pe, mixed, return_weights=True
    )
    queries = block.norm2(queries + attn_out)
    queries = block.norm3(queries + block.mlp(queries))
    q, k = queries + query_pe, keys + key_pe
    keys = block.norm4(keys + block.cross_attn_image_to_token(k, q, queries))
    return (queries, keys), dict(
        positions=positions, unclamped=unclamped, alpha=alpha, weights=weights
    )


def _block_inputs(seed, b=3, hw=(6, 5), tokens=7, shared_pe=True):
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    n = hw[0] * hw[1]
    key_pe = normal(1 if shared_pe else b, n, 32)
    return normal(b, tokens, 32), normal(b, n, 32), normal(b, tokens, 32), key_pe


def _assert_close(got, ref, rtol=1e-5):
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= rtol * np.abs(ref).max()


@pytest.mark.parametrize(
    "options, shared_pe, one_at_a_time",
    [
        ({}, True, True),
        ({}, True, False),  # the batched form accelerators run
        ({"sample": "projected"}, True, True),
        ({"use_drp": False}, False, True),
        ({"sample": "projected", "use_drp": False}, False, False),
        ({"padding": "border"}, True, True),
        ({"padding": "border", "use_drp": False}, False, False),
    ],
)
def test_fast_block_equals_eq_4_to_6_written_out(monkeypatch, options, shared_pe, one_at_a_time):
    monkeypatch.setattr(transformer, "_one_prompt_at_a_time", lambda: one_at_a_time)
    block = _randomized_block(12, **options)
    queries, keys, query_pe, key_pe = _block_inputs(13, shared_pe=shared_pe)
    hw = (6, 5)
    got_q, got_k, inter = block(queries, keys, query_pe, key_pe, hw=hw, return_intermediates=True)
    (ref_q, ref_k), ref = _reference_block(block, queries, keys, query_pe, key_pe, hw)
    offsets = np.asarray(ref["unclamped"] - ops.reference_grid(*hw))
    assert np.abs(offsets).max() > 2.0 and (np.asarray(ref["unclamped"]) < 0).any()
    if options.get("padding") == "border":
        positions = np.asarray(inter["dsp_positions"])
        assert positions.min() == 0.0 and (positions <= np.array([hw[0] - 1, hw[1] - 1])).all()
    _assert_close(inter["dsp_positions"], ref["positions"])
    _assert_close(inter["token_to_image_attn"], ref["weights"])
    _assert_close(got_q, ref_q)
    _assert_close(got_k, ref_k)
    if ref["alpha"] is None:
        assert "drp_alpha" not in inter
    else:
        assert abs(float(ref["alpha"].sum(-1).mean()) - 1.0) > 0.05
        _assert_close(inter["drp_alpha"], ref["alpha"])


def test_fast_block_gradients_equal_the_written_out_ones():
    block = _randomized_block(14)
    queries, keys, query_pe, key_pe = _block_inputs(15)
    hw = (6, 5)
    target = jax.random.normal(jax.random.key(16), queries.shape)

    def loss(block, fast):
        if fast:
            out, _, _ = block(queries, keys, query_pe, key_pe, hw=hw)
        else:
            (out, _), _ = _reference_block(block, queries, keys, query_pe, key_pe, hw)
        return jnp.sum(out * target)

    grads = {}
    for fast in (True, False):
        diff = nnx.DiffState(0, PluginParam)
        grads[fast] = nnx.grad(loss, argnums=diff)(block, fast)
    got, ref = (jax.tree_util.tree_leaves(grads[f]) for f in (True, False))
    assert len(got) == len(ref) == 14  # DSP 7 arrays, DRP 7
    for g, r in zip(got, ref):
        _assert_close(g, r, rtol=1e-4)
    offset_grad = grads[True]["dsp"]["offset"]["kernel"][...]
    assert np.abs(np.asarray(offset_grad)).max() > 0


@pytest.mark.parametrize(
    "k, stride, padding, size", [(3, 1, 1, 9), (3, 2, 1, 9), (3, 2, 1, 8), (5, 1, 0, 7)]
)
def test_conv_module_depthwise_paths_match_the_grouped_convolution(k, stride, padding, size):
    conv = Conv(6, 6, k, stride=stride, padding=padding, groups=6, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, size, size + 1, 6))
    ref = (
        jax.lax.conv_general_dilated(
            x,
            conv.kernel[...],
            (stride, stride),
            [(padding, padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=6,
            precision=jax.lax.Precision.HIGHEST,
        )
        + conv.bias[...]
    )
    got = conv(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
