"""The fast path (bf16, fused/folded attention, padding skipped, scanned blocks) against the
reference path and the official PyTorch attention. Small shapes, CPU."""

import pytest

pytest.importorskip("torch")  # without torch (CI's Python 3.12 lane): skipped, not an error

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from stablesam_jax import build_sam
from stablesam_jax import checkpoint as ckpt
from stablesam_jax.modeling import SAM_VARIANTS, ImageEncoderViT, ops
from stablesam_jax.predictor import SamPredictor
from stablesam_jax.tools.official import import_official_modeling

pytestmark = pytest.mark.torch_reference

# ----------------------------------------------------------------------------- attention


def _torch_attention(q, k, v, rel_pos_h, rel_pos_w, hw, scale):
    """The official SAM attention core (image_encoder.Attention.forward after the qkv split),
    q, k, v [B*heads, N, C] torch tensors."""
    modeling = import_official_modeling()
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = modeling.image_encoder.add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, hw, hw)
    return attn.softmax(dim=-1) @ v


def _attention_inputs(hw, seed, batch=2, heads=2, c=8):
    rng = np.random.default_rng(seed)
    n = hw[0] * hw[1]
    q, k, v = (rng.standard_normal((batch, n, heads, c)).astype(np.float32) for _ in range(3))
    rel_pos_h = (0.5 * rng.standard_normal((2 * hw[0] - 1, c))).astype(np.float32)
    rel_pos_w = (0.5 * rng.standard_normal((2 * hw[1] - 1, c))).astype(np.float32)
    upstream = rng.standard_normal((batch, n, heads, c)).astype(np.float32)
    return q, k, v, rel_pos_h, rel_pos_w, upstream


def _heads_first(x):  # [B, N, heads, C] -> [B * heads, N, C], the official layout
    b, n, h, c = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b * h, n, c)


def _torch_value_and_grads(q, k, v, rel_pos_h, rel_pos_w, upstream, hw, scale):
    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v, rel_pos_h, rel_pos_w)]
    tq, tk, tv, th, tw = tensors
    b, n, heads, c = q.shape
    out = _torch_attention(
        *(t.permute(0, 2, 1, 3).reshape(b * heads, n, c) for t in (tq, tk, tv)), th, tw, hw, scale
    )
    out = out.reshape(b, heads, n, c).permute(0, 2, 1, 3)
    (out * torch.from_numpy(upstream)).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


def _run(module, x):
    """module(x) compiled as one program (op-by-op dispatch of a whole encoder is slow)."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


# A 5x5 window (folded head dim 8+5+5=18 -> padded to 24) and a non-square "global" grid, so a
# mix-up of rows and columns cannot cancel out.
SHAPES = [(5, 5), (4, 6)]


# (backend, max_logits_bytes): 2400 bytes forces loops over query rows (1 row of the 5x5 grid, 2
# rows of the 4x6 one: 2 heads x 4 bytes x 25 or 24 keys per query); 5000 bytes holds one whole
# 5x5 sequence, so the 5x5 case loops over sequences instead.
BACKENDS = [("xla_folded", None), ("xla_bias", None), ("xla_bias", 2400), ("xla_bias", 5000)]


@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("backend,max_logits_bytes", BACKENDS)
def test_fast_attention_matches_official_with_gradients(hw, backend, max_logits_bytes):
    q, k, v, rel_pos_h, rel_pos_w, upstream = _attention_inputs(hw, seed=sum(hw))
    scale = 8**-0.5
    ref_out, ref_grads = _torch_value_and_grads(q, k, v, rel_pos_h, rel_pos_w, upstream, hw, scale)

    def loss(q, k, v, rel_pos_h, rel_pos_w):
        out = ops.rel_pos_attention(
            q, k, v, rel_pos_h, rel_pos_w, hw, scale, backend, max_logits_bytes=max_logits_bytes
        )
        return jnp.sum(out * upstream), out

    grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
        q, k, v, rel_pos_h, rel_pos_w
    )
    assert _rel(ref_out, out) <= 1e-5
    for name, ref_g, g in zip(["q", "k", "v", "rel_pos_h", "rel_pos_w"], ref_grads, grads):
        assert _rel(ref_g, g) <= 1e-4, name


@pytest.mark.parametrize("hw", SHAPES)
def test_folded_rel_pos_attention_heads_first_layout(hw):
    """The public heads-first entry point folds the terms `decomposed_rel_pos_terms` gives."""
    q, k, v, rel_pos_h, rel_pos_w, _ = _attention_inputs(hw, seed=7)
    scale = 8**-0.5
    ref = _torch_attention(
        *(torch.from_numpy(_heads_first(x)) for x in (q, k, v)),
        torch.from_numpy(rel_pos_h),
        torch.from_numpy(rel_pos_w),
        hw,
        scale,
    ).numpy()
    qh, kh, vh = (jnp.asarray(x).transpose(0, 2, 1, 3) for x in (q, k, v))
    rel_h, rel_w = ops.decomposed_rel_pos_terms(qh, rel_pos_h, rel_pos_w, hw)
    got = ops.folded_rel_pos_attention(qh, kh, vh, scale, rel_h, rel_w, hw, implementation="xla")
    assert _rel(ref, np.asarray(got).reshape(ref.shape)) <= 1e-5


def test_plain_attention_without_rel_pos():
    q, k, v, *_ = _attention_inputs((3, 4), seed=3)
    expected = jax.nn.softmax(np.einsum("bqnc,bknc->bnqk", q, k) * 0.5, axis=-1)
    expected = np.einsum("bnqk,bknc->bqnc", expected, v)
    for backend in ("xla_bias", "xla_folded"):
        got = ops.rel_pos_attention(q, k, v, None, None, (3, 4), 0.5, backend)
        assert _rel(expected, got) <= 1e-5, backend


def test_folded_head_dims_and_backend_choice():
    # head_dim + H + W rounded up to a multiple of 8: 64+14+14=92 -> 96; vit_h global 80+64+64.
    assert ops.folded_head_dim(64, (14, 14)) == 96
    assert ops.folded_head_dim(80, (64, 64)) == 208
    assert ops.folded_head_dim(64, (64, 64)) == 192
    hopper = types.SimpleNamespace(platform="gpu", compute_capability="9.0")
    ampere = types.SimpleNamespace(platform="gpu", compute_capability="8.0")
    volta = types.SimpleNamespace(platform="gpu", compute_capability="7.0")
    cpu = types.SimpleNamespace(platform="cpu")
    bf16 = jnp.bfloat16
    assert ops.choose_rel_pos_backend(bf16, 80, (64, 64), hopper) == "cudnn_folded"
    assert ops.choose_rel_pos_backend(bf16, 80, (14, 14), ampere) == "cudnn_folded"
    assert ops.choose_rel_pos_backend(bf16, 80, (64, 64), ampere) == "xla_bias"  # 208 > 128
    assert ops.choose_rel_pos_backend(bf16, 64, (14, 14), volta) == "xla_bias"
    assert ops.choose_rel_pos_backend(jnp.float32, 64, (14, 14), hopper) == "xla_bias"
    assert ops.choose_rel_pos_backend(bf16, 64, (14, 14), cpu) == "xla_bias"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.rel_pos_attention(*_attention_inputs((2, 2), 0)[:5], (2, 2), 1.0, "flash")


def test_folded_cudnn_without_a_gpu_says_what_to_use():
    if ops.cudnn_attention_head_dim_limit() > 0:
        pytest.skip("a GPU that runs cuDNN attention is present")
    attention = (
        ImageEncoderViT(
            rngs=nnx.Rngs(0),
            img_size=64,
            embed_dim=16,
            depth=1,
            num_heads=2,
            attention_impl="folded_cudnn",
            dtype=jnp.bfloat16,
        )
        .blocks[0]
        .attn
    )
    with pytest.raises(ValueError, match="attention_impl='fast'"):
        attention.backend(jnp.bfloat16, (14, 14))


# ----------------------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def vit_t_pixels():
    return jnp.asarray(np.random.default_rng(0).standard_normal((1, 256, 256, 3)), jnp.float32)


@pytest.fixture(scope="module")
def vit_t_reference(vit_t_pixels):
    return _run(build_sam("vit_t").image_encoder, vit_t_pixels)


@pytest.mark.parametrize(
    "impl,scan,max_logits_bytes",
    [
        ("fast", True, None),
        ("fast", False, 20_000),  # loops over single query rows
        ("fast", False, 700_000),  # loops over pairs of windows
        ("folded", False, None),
        ("reference", True, None),
    ],
)
def test_fast_encoder_equals_reference_in_float32(
    vit_t_pixels, vit_t_reference, impl, scan, max_logits_bytes, monkeypatch
):
    """vit_t: a 16x16 grid in 14-windows (padded to 28x28, the padding the fast path skips in
    the projections) and one global block. On a CPU "fast" computes attention in cache-sized
    pieces; small piece sizes make the loops run on these small shapes."""
    if max_logits_bytes is not None:
        monkeypatch.setattr(ops, "CPU_MAX_LOGITS_BYTES", max_logits_bytes)
    model = build_sam("vit_t", attention_impl=impl, scan_blocks=scan)
    assert _rel(vit_t_reference, _run(model.image_encoder, vit_t_pixels)) <= 1e-5


def _deep_encoder(attention_impl, scan_blocks, dtype=None):
    # (window, window, global) x 2: an outer scan of 2 over an inner scan of 2 windowed blocks
    # and one global block; 8x8 grid in 3-windows (padded to 9x9).
    return ImageEncoderViT(
        rngs=nnx.Rngs(5),
        img_size=128,
        embed_dim=32,
        depth=6,
        num_heads=2,
        out_chans=16,
        window_size=3,
        global_attn_indexes=(2, 5),
        attention_impl=attention_impl,
        scan_blocks=scan_blocks,
        dtype=dtype,
    )


def test_scanned_blocks_equal_the_loop():
    """Scanning does not depend on the attention kind (the vit_t test above scans the reference
    path); the fast path here."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 128, 128, 3)), jnp.float32)
    loop = _deep_encoder("fast", scan_blocks=False)
    scanned = _deep_encoder("fast", scan_blocks=True)
    assert scanned.block_pattern() == (3, [(0, 2), (2, 1)])
    ref = _run(loop, x)
    graphdef, state = nnx.split(scanned)
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    assert _rel(ref, encode(state, x)) <= 1e-6
    # Every block's weights matter: perturbing the last windowed block changes the output.
    scanned.blocks[4].mlp.lin2.bias[...] += 1.0
    assert _rel(ref, encode(nnx.state(scanned), x)) > 1e-3


def test_scanned_blocks_keep_the_checkpoint_layout():
    loop = _deep_encoder("reference", scan_blocks=False)
    scanned = _deep_encoder("fast", scan_blocks=True)
    names = ckpt.weight_names(scanned)
    assert names == ckpt.weight_names(loop)
    assert "blocks.4.attn.rel_pos_h" in names


@pytest.mark.parametrize(
    "model_type,pattern",
    [
        ("vit_b", (3, [(0, 2), (2, 1)])),
        ("vit_l", (6, [(0, 5), (5, 1)])),
        ("vit_h", (8, [(0, 7), (7, 1)])),
    ],
)
def test_block_pattern_of_released_sizes(model_type, pattern):
    config = SAM_VARIANTS[model_type]
    encoder = nnx.eval_shape(
        lambda: ImageEncoderViT(
            rngs=nnx.Rngs(0),
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            global_attn_indexes=config.encoder_global_attn_indexes,
        )
    )
    assert encoder.block_pattern() == pattern


# ----------------------------------------------------------------------------- bf16 vs fp32


def test_bfloat16_fast_path_agrees_with_float32_reference():
    """Random weights, so no tolerance can come from a paper. bfloat16 keeps 8 significant bits
    (relative rounding 2^-9); through a few blocks errors grow to about 1% of the largest value,
    while a wrong op (a lost relative-position term, a misplaced window) changes outputs by their
    full size. Masks must agree wherever the reference logit is not tiny."""
    ref = SamPredictor(build_sam("vit_t", seed=1))
    fast = SamPredictor(
        build_sam("vit_t", seed=1, dtype=jnp.bfloat16, attention_impl="fast", scan_blocks=True)
    )
    flat_ref, flat_fast = ckpt.flat_weights(ref.model), ckpt.flat_weights(fast.model)
    assert all(np.array_equal(flat_ref[k], flat_fast[k]) for k in flat_ref)
    rng = np.random.default_rng(2)
    image = (rng.random((200, 256, 3)) * 255).astype(np.uint8)
    ref.set_image(image)
    fast.set_image(image)
    assert _rel(ref.features, fast.features) <= 0.02

    corners = rng.random((8, 2, 2)) * [256, 200]
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=-1)
    ref_masks, ref_iou, ref_low = ref.predict_batch(boxes=boxes, return_logits=True)
    masks, iou, low = fast.predict_batch(boxes=boxes, return_logits=True)
    assert _rel(ref_low, low) <= 0.04
    assert np.abs(ref_iou - iou).max() <= 0.02
    agree = (ref_masks > 0) == (masks > 0)
    assert agree.mean() >= 0.995
    clear = np.abs(ref_masks) > 0.05 * np.abs(ref_masks).max()
    assert clear.mean() > 0.5  # the measure covers most pixels
    assert agree[clear].mean() >= 0.999


# ----------------------------------------------------------------------------- buckets


def test_prompt_buckets_do_not_change_results():
    """5 prompts run padded to the 16-bucket; each must equal its own unpadded 1-prompt call."""
    predictor = SamPredictor(build_sam("vit_t", seed=3), prompt_buckets=(1, 16))
    rng = np.random.default_rng(4)
    image = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    corners = rng.random((5, 2, 2)) * [160, 120]
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=-1)
    points = (rng.random((5, 2, 2)) * [160, 120]).astype(np.float32)
    labels = rng.integers(0, 2, (5, 2))
    masks, iou, low = predictor.predict_batch(points, labels, boxes, return_logits=True)
    assert masks.shape[0] == iou.shape[0] == low.shape[0] == 5
    for i in range(5):
        m, s, lo = predictor.predict(points[i], labels[i], boxes[i], return_logits=True)
        assert _rel(lo, low[i]) <= 1e-5
        assert _rel(m, masks[i]) <= 1e-5
        assert np.abs(s - iou[i]).max() <= 1e-5


# ----------------------------------------------------------------------------- GPU program


@pytest.mark.parametrize("head_dim_limit,fused_calls", [(256, 2), (128, 1)])
def test_gpu_encoder_program_lowers_to_cudnn_attention(monkeypatch, head_dim_limit, fused_calls):
    """No GPU here: lower the bf16 vit_b encoder for CUDA as if on a Hopper (head dims <= 256:
    both block kinds fused) or an Ampere GPU (<= 128: the global blocks' folded head dim 192
    does not fit, they fall back to XLA). jax's own cuDNN checks run on our shapes; with
    scanned blocks each block kind appears once in the program."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
    except ImportError:
        pytest.skip("this jax has no cuDNN attention module to drive")
    for name, value in [
        ("check_cudnn_version", lambda: 91000),
        ("check_compute_capability", lambda capability: head_dim_limit == 256),
        ("is_cuda_compute_capability_equal", lambda capability: False),
    ]:
        if not hasattr(cudnn_attention, name):
            pytest.skip(f"jax internals changed ({name}); run the GPU benchmark instead")
        monkeypatch.setattr(cudnn_attention, name, value)
    monkeypatch.setattr(ops, "cudnn_attention_head_dim_limit", lambda device=None: head_dim_limit)
    config = SAM_VARIANTS["vit_b"]
    encoder = nnx.eval_shape(
        lambda: ImageEncoderViT(
            rngs=nnx.Rngs(0),
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            global_attn_indexes=config.encoder_global_attn_indexes,
            dtype=jnp.bfloat16,
            attention_impl="fast",
            scan_blocks=True,
        )
    )
    graphdef, state = nnx.split(encoder)
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    x = jax.ShapeDtypeStruct((2, 1024, 1024, 3), jnp.float32)
    text = encode.trace(state, x).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("@__cudnn$fmha") == fused_calls
