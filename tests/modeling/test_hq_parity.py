"""Parity with the official `segment-anything-hq==0.3`: HQ-SAM's decoder and TinyViT stage by
stage, then whole predictor runs; every tensor randomized (BatchNorm running statistics too), fp32.

Tolerance everywhere: max |official - ours| / max |official| <= 1e-4. Each check prints
its measured error: `python -m pytest -q -s tests/modeling/test_hq_parity.py | grep "rel err"`."""

import pytest

pytest.importorskip("torch")  # without torch (CI's Python 3.12 lane): skipped, not an error

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from hq_pairs import make_hq_pair
from sam_pairs import nchw, nhwc, rel_err

from stablesam_jax import SamPredictor, build_sam
from stablesam_jax.constants import PAD_LABEL
from stablesam_jax.convert import ConversionError, convert_state_dict, guess_model_type
from stablesam_jax.modeling import SAM_VARIANTS
from stablesam_jax.tools.official_hq import official_predictor

pytestmark = pytest.mark.torch_reference

TOL = 1e-4


def check(name: str, reference, ours) -> None:
    err = rel_err(reference, ours)
    print(f"rel err {name:40s} {err:.2e}")
    assert err <= TOL, (name, err)


@pytest.fixture(scope="module")
def hq():  # vit_b-style: 3-block ViT at 256 px, global blocks 1 and 2 (early features: block 1)
    return make_hq_pair(SAM_VARIANTS["hq_vit_t"], seed=0)


@pytest.fixture(scope="module")
def tiny():  # MobileSAM layout: TinyViT with SAM's decoder (1024 px, 64x64 grid)
    return make_hq_pair(SAM_VARIANTS["vit_tiny_t"], seed=1)


@pytest.fixture(scope="module")
def hq_tiny():  # HQ-SAM's vit_tiny layout: TinyViT with the HQ decoder
    return make_hq_pair(SAM_VARIANTS["hq_vit_tiny_t"], seed=2)


def test_every_weight_is_randomized(hq, hq_tiny):
    for torch_sam, _, _ in (hq, hq_tiny):
        for name, tensor in torch_sam.state_dict().items():
            if not tensor.is_floating_point() or name.endswith(("pixel_mean", "pixel_std")):
                continue
            assert tensor.std() > 0 and not torch.all(tensor == 1), name
    names = hq_tiny[2]
    assert any(k.endswith("bn.running_var") for k in names)
    assert any(k.endswith("attention_biases") for k in names)


def test_conversion_names_what_it_drops(tiny, hq_tiny):
    """TinyViT's classifier head and BatchNorm counters are dropped by name; anything else
    unknown still fails the completeness proof."""
    for (_, ours, state_dict), name in ((tiny, "vit_tiny_t"), (hq_tiny, "hq_vit_tiny_t")):
        assert "image_encoder.head.weight" in state_dict
        assert "image_encoder.norm_head.bias" in state_dict
        assert guess_model_type({k: v.shape for k, v in state_dict.items()}) == name
        with pytest.raises(ConversionError, match="image_encoder.extra.weight"):
            convert_state_dict({**state_dict, "image_encoder.extra.weight": np.zeros(3)}, ours)


def test_hq_checkpoint_refused_by_sam_model(hq):
    _, _, state_dict = hq
    abstract = nnx.eval_shape(lambda: build_sam("vit_t"))
    with pytest.raises(ConversionError, match="hq_vit_t weights"):
        convert_state_dict(state_dict, abstract)


def test_vit_early_features(hq):
    """The embedding and the first global block's output (the official `interm_embeddings[0]`)."""
    torch_sam, ours, _ = hq
    x = np.random.default_rng(3).standard_normal((1, 256, 256, 3)).astype(np.float32)
    with torch.no_grad():
        ref, interm = torch_sam.image_encoder(nchw(x))
    got = ours.image_encoder(jnp.asarray(x))
    check("vit embedding", nhwc(ref), got[..., :256])
    check("vit early features", interm[0], got[..., 256:])


def _decoder_inputs(ours, seed, early_dim, grid, batch=3):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((1, grid, grid, 256)).astype(np.float32)
    early = rng.standard_normal((1, grid, grid, early_dim)).astype(np.float32)
    coords = (rng.random((batch, 3, 2)) * ours.img_size).astype(np.float32)
    labels = rng.integers(0, 2, (batch, 3)).astype(np.int32)
    masks = rng.standard_normal((batch, 1, 4 * grid, 4 * grid)).astype(np.float32) * 5
    return emb, early, coords, labels, masks


@pytest.mark.parametrize("pair", ["hq", "hq_tiny"])
def test_hq_feature_layers(pair, request):
    torch_sam, ours, _ = request.getfixturevalue(pair)
    config = ours.config
    dec, ref_dec = ours.mask_decoder, torch_sam.mask_decoder
    emb, early, *_ = _decoder_inputs(ours, 4, config.early_dim, config.image_embedding_size)
    upscaled = np.random.default_rng(5).standard_normal((1, *[4 * emb.shape[1]] * 2, 32))
    upscaled = upscaled.astype(np.float32)
    for name, ref_in, got_in in [
        ("compress_vit_feat", early, early),
        ("embedding_encoder", emb, emb),
        ("embedding_maskfeature", upscaled, upscaled),
    ]:
        with torch.no_grad():
            ref = getattr(ref_dec, name)(nchw(ref_in))
        got = jnp.asarray(got_in)
        for layer in getattr(dec, name):
            got = layer(got)
        check(f"{pair} {name}", nhwc(ref), got)


@pytest.mark.parametrize("pair", ["hq"])  # hq_tiny's decoder: through its predictor below
def test_hq_decoder(pair, request):
    """All five masks and the IoUs (`predict_masks`), then every output mode of `forward`."""
    torch_sam, ours, _ = request.getfixturevalue(pair)
    config = ours.config
    emb, early, coords, labels, masks = _decoder_inputs(
        ours, 6, config.early_dim, config.image_embedding_size
    )
    dec, ref_dec = ours.mask_decoder, torch_sam.mask_decoder
    with torch.no_grad():
        sparse, dense = torch_sam.prompt_encoder(
            (torch.from_numpy(coords), torch.from_numpy(labels)), None, torch.from_numpy(masks)
        )
        pe = torch_sam.prompt_encoder.get_dense_pe()
        hq_features = ref_dec.embedding_encoder(nchw(emb)) + ref_dec.compress_vit_feat(nchw(early))
        ref_all, ref_iou_all = ref_dec.predict_masks(nchw(emb), pe, sparse, dense, hq_features)
    j_sparse, j_dense = ours.prompt_encoder(
        (jnp.asarray(coords), jnp.asarray(labels)), None, jnp.asarray(masks)
    )
    both = jnp.concatenate([jnp.asarray(emb), jnp.asarray(early)], axis=-1)
    j_pe = ours.prompt_encoder.get_dense_pe()
    got_all, got_iou_all, _ = dec(both, j_pe, j_sparse, j_dense, None)
    check(f"{pair} decoder all masks", ref_all, got_all)
    check(f"{pair} decoder iou", ref_iou_all, got_iou_all)
    for multimask in (True, False):
        for hq_only in (True, False):
            with torch.no_grad():
                ref, ref_iou = ref_dec(
                    nchw(emb), pe, sparse, dense, multimask, hq_only, [torch.from_numpy(early)]
                )
            got, got_iou, _ = dec(both, j_pe, j_sparse, j_dense, multimask, hq_token_only=hq_only)
            assert got.shape == tuple(ref.shape) == (3, 1, *ref.shape[2:])
            check(f"{pair} decoder output", ref, got)
            check(f"{pair} decoder output iou", ref_iou, got_iou)


def _tokens(t: torch.Tensor) -> np.ndarray:
    """Official TinyViT's [B, L, C] tokens (on a square grid) -> [B, H, W, C]."""
    b, n, c = t.shape
    side = int(round(n**0.5))
    return t.detach().numpy().reshape(b, side, side, c)


def test_tiny_vit_stages(tiny):
    """Stem, the MBConv stage, each windowed-attention stage, the neck, then the whole encoder."""
    torch_sam, ours, _ = tiny
    ref_enc, enc = torch_sam.image_encoder, ours.image_encoder
    x = np.random.default_rng(7).standard_normal((1, 1024, 1024, 3)).astype(np.float32)
    with torch.no_grad():
        ref = ref_enc.patch_embed(nchw(x))
        got = enc.patch_embed(jnp.asarray(x))
        check("tiny_vit patch_embed", nhwc(ref), got)
        ref = ref_enc.layers[0](ref)  # MBConv blocks, merge: -> [B, L, C]
        got = enc.layers[0](got)
        check("tiny_vit layer0 (MBConv)", _tokens(ref), got)
        for i in (1, 2, 3):  # windowed attention (7: padded 128 -> 133, 64 -> 70; 14), merges
            got = enc.layers[i](jnp.asarray(_tokens(ref)))  # each stage on the official input
            ref = ref_enc.layers[i](ref)
            check(f"tiny_vit layer{i}", _tokens(ref), got)
        tokens = _tokens(ref)
        ref_neck = ref_enc.neck(nchw(tokens))
    got_neck = jnp.asarray(tokens)
    for layer in enc.neck:
        got_neck = layer(got_neck)
    check("tiny_vit neck", nhwc(ref_neck), got_neck)


def test_tiny_vit_encoder_and_early_features(hq_tiny):
    torch_sam, ours, _ = hq_tiny
    x = np.random.default_rng(8).standard_normal((1, 1024, 1024, 3)).astype(np.float32)
    with torch.no_grad():
        ref, interm = torch_sam.image_encoder(nchw(x))
    got = ours.image_encoder(jnp.asarray(x))
    check("tiny_vit embedding", nhwc(ref), got[..., :256])
    check("tiny_vit early features", interm[0], got[..., 256:])


def _predictor_cases(official, image):
    """(prompt, multimask, hq_token_only): every prompt kind and every flag value once (the
    decoder test covers every combination of the flags)."""
    h, w = image.shape[:2]
    box = np.array([0.1 * w, 0.15 * h, 0.7 * w, 0.8 * h])
    points, labels = np.array([[0.3 * w, 0.4 * h], [0.5 * w, 0.6 * h]]), np.array([1, 0])
    _, _, low_res = official.predict(box=box, multimask_output=False)
    return [
        (dict(box=box), True, False),
        (dict(point_coords=points, point_labels=labels), False, True),
        (dict(point_coords=points[:1], point_labels=labels[:1], mask_input=low_res), True, True),
    ]


@pytest.mark.parametrize("pair", ["hq", "tiny", "hq_tiny"])
def test_predictor_matches_official_predictor(pair, request):
    """Non-square image; box, points, points + mask; multimask both ways; `hq_token_only` both
    ways for HQ-SAM (the official HQ predictor), SAM's predictor for MobileSAM."""
    torch_sam, ours, _ = request.getfixturevalue(pair)
    config = ours.config
    image = (np.random.default_rng(9).random((300, 190, 3)) * 255).astype(np.uint8)
    official, predictor = official_predictor(torch_sam, config), SamPredictor(ours)
    official.set_image(image)
    predictor.set_image(image)
    check(
        f"{pair} predictor embedding",
        official.get_image_embedding(),
        predictor.get_image_embedding(),
    )
    for kwargs, multimask, hq_only in _predictor_cases(official, image):
        extra = {"hq_token_only": hq_only} if config.hq else {}
        ref = official.predict(**kwargs, multimask_output=multimask, return_logits=True, **extra)
        got = predictor.predict(**kwargs, multimask_output=multimask, return_logits=True, **extra)
        for what, r, g in zip(("masks", "iou", "low-res logits"), ref, got):
            check(f"{pair} predictor {what}", r, g)


def test_hq_token_only_needs_an_hq_model(tiny):
    _, ours, _ = tiny
    predictor = SamPredictor(ours)
    predictor.set_image(np.zeros((64, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="hq_token_only=True needs an HQ-SAM model"):
        predictor.predict(box=np.array([1, 2, 30, 40]), hq_token_only=True)


def test_padded_decode_equals_official_per_prompt(hq):
    """decode_padded (one compile for any prompt mix) on HQ-SAM equals the official decoder run
    on each prompt alone."""
    torch_sam, ours, _ = hq
    config = ours.config
    emb, early, coords, labels, _ = _decoder_inputs(ours, 10, config.early_dim, 16, batch=2)
    both = jnp.concatenate([jnp.asarray(emb), jnp.asarray(early)], axis=-1)
    pc = np.zeros((2, 4, 2), np.float32)
    pl = np.full((2, 4), PAD_LABEL, np.int32)
    pc[0, :3], pl[0, :3] = coords[0], labels[0]
    pc[1, :1], pl[1, :1] = coords[1, :1], labels[1, :1]
    boxes = np.array([[0, 0, 0, 0], [10, 20, 150, 200]], np.float32)
    got, got_iou, _ = ours.decode_padded(
        both,
        jnp.asarray(pc),
        jnp.asarray(pl),
        jnp.asarray(boxes),
        jnp.array([False, True]),
        multimask_output=True,
    )
    for i, (n, has_box) in enumerate([(3, False), (1, True)]):
        with torch.no_grad():
            s, d = torch_sam.prompt_encoder(
                (torch.from_numpy(pc[i : i + 1, :n]), torch.from_numpy(pl[i : i + 1, :n])),
                torch.from_numpy(boxes[i : i + 1]) if has_box else None,
                None,
            )
            ref, ref_iou = torch_sam.mask_decoder(
                nchw(emb),
                torch_sam.prompt_encoder.get_dense_pe(),
                s,
                d,
                True,
                False,
                [torch.from_numpy(early)],
            )
        check("hq padded decode", ref, got[i : i + 1])
        check("hq padded decode iou", ref_iou, got_iou[i : i + 1])
