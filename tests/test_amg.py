"""Automatic mask generation against the official `SamAutomaticMaskGenerator` (PyTorch).

Two set-ups, both run through the official generator and ours unchanged:
- the same fully randomized vit_t weights in both (end to end: encoder, decoder, filters, NMS);
- an analytic "blob" prompt encoder + decoder swapped into both models: each click gives three
  discs of different radii and sharpness around the point, so the masks are compact and varied
  and the filters, crop-edge rule and NMS all have real work to do (random SAM weights give
  mostly full or empty masks).
Records are matched by their origin (crop box, point, nearest predicted IoU), then compared.
"""

import pytest

pytest.importorskip("torch")  # without torch (CI's Python 3.12 lane): skipped, not an error

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision_stub  # noqa: F401 - the official package imports torchvision
from flax import nnx
from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator
from segment_anything.utils import amg as official_amg

from stablesam_jax import automatic_mask_generator as amg_module
from stablesam_jax import checkpoint as ckpt
from stablesam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from stablesam_jax.convert import convert_state_dict
from stablesam_jax.data.scenes import generate_scene
from stablesam_jax.modeling import SAM_VARIANTS, Sam
from stablesam_jax.modeling.plugins import PluginConfig
from stablesam_jax.tools.official import build_official_sam, randomize_
from stablesam_jax.utils import amg

pytestmark = pytest.mark.torch_reference

CONFIG = SAM_VARIANTS["vit_t"]


@pytest.fixture(scope="module")
def image():
    return generate_scene(3, size=128)["image"][:, :100]  # 128 x 100: not square, not a bucket


def _stable_sam_from(torch_sam, seed: int = 0) -> Sam:
    """Stable-SAM holding the torch model's SAM weights, with random plugins at their identity
    point (zero offsets, routing scale 1), where Stable-SAM computes exactly what SAM does. Built
    abstractly and filled, because initializing a model op by op costs half a minute on CPU."""
    ours = nnx.eval_shape(lambda: Sam(CONFIG, rngs=nnx.Rngs(0), plugin_config=PluginConfig()))
    flat = convert_state_dict({k: v.numpy() for k, v in torch_sam.state_dict().items()}, ours)
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(ours):
        if not isinstance(var, nnx.Variable):
            continue
        name = ckpt.path_name(path)
        if ckpt.is_sam_weight(path, var):
            value = flat.pop(name)
        else:
            value = rng.standard_normal(var.shape).astype(np.float32) * 0.05
            if name.endswith("offset.kernel"):
                value = np.zeros(var.shape, np.float32)
            elif name.endswith("drp.scale"):
                value = np.ones(var.shape, np.float32)
            elif name.endswith("norm.scale"):
                value = value + 1.0
        assert value.shape == var.shape, name
        var.set_value(jnp.asarray(value, var.dtype))
    assert not flat, f"unused converted weights: {sorted(flat)[:5]}"
    return ours


@pytest.fixture(scope="module")
def pair():
    """Official torch vit_t and our Stable-SAM port with the same randomized SAM weights. The
    decoder's two transposed-conv kernels are made equal over their 2x2 taps (nearest-neighbour
    upsampling): random taps paint a checkerboard over every mask, so no mask would be compact."""
    torch_sam = build_official_sam(CONFIG)
    randomize_(torch_sam, seed=0)
    with torch.no_grad():
        for i in (0, 3):
            w = torch_sam.mask_decoder.output_upscaling[i].weight
            w.copy_(w[:, :, :1, :1].expand_as(w).clone())
    return torch_sam, _stable_sam_from(torch_sam)


# ----------------------------------------------------------------------------- blob decoder


def blob_outputs(points, low_res: int, img_size: int, xp, multimask_output: bool = True):
    """points [B, 2] (x, y) in the input frame -> logits [B, 3, L, L], iou [B, 3] (the smallest
    blob alone, [B, 1, ...], without multimask output); `xp` is torch or jax.numpy, so both models
    run the same formula."""
    centres = (xp.arange(low_res, dtype=xp.float32) + 0.5) * (img_size / low_res)
    px, py = points[:, 0], points[:, 1]
    dist = xp.sqrt(
        (centres[None, None, :] - px[:, None, None]) ** 2
        + (centres[None, :, None] - py[:, None, None]) ** 2
    )
    phase = xp.sin(0.05 * px + 0.09 * py)
    sharpness = 0.3 + 0.25 * (1.0 + phase)
    logits, iou = [], []
    for m, base in enumerate((12.0, 30.0, 60.0)):
        radius = base * (1.0 + 0.3 * phase)
        logits.append((radius[:, None, None] - dist) * sharpness[:, None, None])
        iou.append(0.7 + 0.25 * xp.sin(0.13 * px - 0.07 * py + 1.7 * m))
    logits, iou = xp.stack(logits, 1), xp.stack(iou, 1)
    return (logits, iou) if multimask_output else (logits[:, :1], iou[:, :1])


class _TorchBlobPrompts(torch.nn.Module):
    def forward(self, points, boxes, masks):
        return points[0][:, 0, :].float(), None

    def get_dense_pe(self):
        return torch.zeros(1)


class _TorchBlobDecoder(torch.nn.Module):
    def forward(
        self,
        image_embeddings,
        image_pe,
        sparse_prompt_embeddings,
        dense_prompt_embeddings,
        multimask_output,
    ):
        return blob_outputs(
            sparse_prompt_embeddings,
            4 * CONFIG.image_embedding_size,
            CONFIG.img_size,
            torch,
            multimask_output,
        )


class _JaxBlobPrompts(nnx.Module):
    def __call__(self, points, boxes, masks):
        return points[0][:, 0, :].astype(np.float32), None

    def get_dense_pe(self):
        import jax.numpy as jnp

        return jnp.zeros((1,))


class _JaxBlobDecoder(nnx.Module):
    def __call__(self, image_embeddings, image_pe, sparse, dense, multimask_output, **unused):
        import jax.numpy as jnp

        logits, iou = blob_outputs(
            sparse, 4 * CONFIG.image_embedding_size, CONFIG.img_size, jnp, multimask_output
        )
        return logits, iou, {}


@pytest.fixture(scope="module")
def blob_pair(pair):
    import copy

    torch_sam, ours = pair
    torch_blob = copy.deepcopy(torch_sam)
    torch_blob.prompt_encoder = _TorchBlobPrompts()
    torch_blob.mask_decoder = _TorchBlobDecoder()
    ours_blob = nnx.clone(ours)  # the plugins lived in the decoder: this is plain SAM
    ours_blob.prompt_encoder = _JaxBlobPrompts()
    ours_blob.mask_decoder = _JaxBlobDecoder()
    return torch_blob, ours_blob


# ----------------------------------------------------------------------------- comparison


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def compare_records(ref, got) -> dict:
    """Pairs each official record with ours of the same origin; returns the worst differences."""
    assert len(ref) == len(got), (len(ref), len(got))
    unused = list(range(len(got)))
    stats = {
        "count": len(ref),
        "min_mask_iou": 1.0,
        "max_iou_pred_diff": 0.0,
        "max_stability_diff": 0.0,
        "max_bbox_diff": 0,
        "max_area_diff": 0,
    }
    for r in ref:
        same_origin = [
            j
            for j in unused
            if np.allclose(got[j]["crop_box"], r["crop_box"])
            and np.allclose(got[j]["point_coords"], r["point_coords"], atol=1e-6)
        ]
        assert same_origin, f"no record of ours comes from point {r['point_coords']}"
        j = min(same_origin, key=lambda j: abs(got[j]["predicted_iou"] - r["predicted_iou"]))
        unused.remove(j)
        g = got[j]
        stats["min_mask_iou"] = min(
            stats["min_mask_iou"], _mask_iou(r["segmentation"], g["segmentation"])
        )
        stats["max_iou_pred_diff"] = max(
            stats["max_iou_pred_diff"], abs(r["predicted_iou"] - g["predicted_iou"])
        )
        stats["max_stability_diff"] = max(
            stats["max_stability_diff"], abs(r["stability_score"] - g["stability_score"])
        )
        stats["max_bbox_diff"] = max(
            stats["max_bbox_diff"], int(np.abs(np.subtract(r["bbox"], g["bbox"])).max())
        )
        stats["max_area_diff"] = max(stats["max_area_diff"], abs(r["area"] - g["area"]))
    return stats


def _check(stats, iou_pred_tol=1e-5):
    assert stats["min_mask_iou"] >= 0.99, stats
    assert stats["max_iou_pred_diff"] <= iou_pred_tol, stats
    assert stats["max_stability_diff"] <= 0.01, stats
    assert stats["max_bbox_diff"] <= 1, stats


BLOB_SETTINGS = {
    "filters": dict(points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.5),
    "crops": dict(
        points_per_side=6,
        pred_iou_thresh=0.6,
        stability_score_thresh=0.5,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
    ),
}


@pytest.mark.parametrize("setting", sorted(BLOB_SETTINGS))
def test_blob_decoder_matches_official(blob_pair, image, setting):
    torch_blob, ours_blob = blob_pair
    kwargs = BLOB_SETTINGS[setting]
    ref = OfficialGenerator(torch_blob, **kwargs).generate(image)
    got = SamAutomaticMaskGenerator(ours_blob, **kwargs).generate(image)
    # Non-trivial: many records, several sizes, and the filters and NMS removed most candidates.
    assert len(ref) >= 8 and len({r["area"] for r in ref}) >= 4
    _check(compare_records(ref, got))
    # Records come in NMS order (descending predicted IoU within a crop).
    if setting == "filters":
        scores = [g["predicted_iou"] for g in got]
        assert scores == sorted(scores, reverse=True)


RANDOM_SETTINGS = {
    # No filters: every point's masks reach the NMS (empty masks, whose boxes are [0,0,0,0] and
    # whose IoU is NaN, are never suppressed, exactly as in torchvision).
    "unfiltered": dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
}


@pytest.mark.parametrize("setting", sorted(RANDOM_SETTINGS))
def test_random_weights_match_official(pair, image, setting):
    """End to end on the real model; ours is Stable-SAM at its identity point, so this also shows
    the generator runs Stable-SAM (and it equals SAM there)."""
    torch_sam, ours = pair
    kwargs = RANDOM_SETTINGS[setting]
    ref = OfficialGenerator(torch_sam, **kwargs).generate(image)
    got = SamAutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert len(ref) >= 10
    _check(compare_records(ref, got), iou_pred_tol=1e-4)


class _TorchSingleMaskDecoder(torch.nn.Module):
    """The official decoder answering every call with its single-mask output: the official
    generator (which repeats each point by the number of masks returned) then does what ours does
    with multimask_output=False."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, **kwargs):
        return self.decoder(**{**kwargs, "multimask_output": False})


@pytest.mark.parametrize("model", ["blob", "random_weights"])
def test_single_mask_output_matches_official_with_single_mask_decoder(
    model, pair, blob_pair, image
):
    import copy

    torch_sam, ours = blob_pair if model == "blob" else pair
    torch_single = copy.deepcopy(torch_sam)
    torch_single.mask_decoder = _TorchSingleMaskDecoder(torch_single.mask_decoder)
    if model == "blob":
        kwargs, enough = BLOB_SETTINGS["filters"], 8
    else:  # random single-mask outputs are near-duplicates: few survive the NMS
        kwargs, enough = RANDOM_SETTINGS["unfiltered"], 3
    ref = OfficialGenerator(torch_single, **kwargs).generate(image)
    got = SamAutomaticMaskGenerator(ours, multimask_output=False, **kwargs).generate(image)
    assert len(ref) >= enough
    _check(compare_records(ref, got), iou_pred_tol=1e-4)
    multi = SamAutomaticMaskGenerator(ours, **kwargs).generate(image)
    assert len(multi) != len(got)


def test_same_bucket_compiles_once(blob_pair):
    _, ours_blob = blob_pair
    gen = SamAutomaticMaskGenerator(
        ours_blob, points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.3
    )
    gen.generate(generate_scene(10, size=128)["image"])  # warm up whatever this bucket needs
    before = dict(amg_module.TRACE_COUNTS)
    # New content and new sizes inside the 128 x 128 bucket, different thresholds: no new trace.
    for seed, (h, w) in enumerate([(128, 128), (97, 128), (128, 70), (120, 99)]):
        scene = generate_scene(seed + 20, size=128)["image"][:h, :w]
        gen.pred_iou_thresh = 0.5 + 0.1 * seed
        gen.generate(scene)
    assert dict(amg_module.TRACE_COUNTS) == before
    # The counter does count: a size in the next bucket (129 rows -> 192) compiles again.
    gen.generate(np.concatenate([scene, scene[:10]])[:129])
    assert amg_module.TRACE_COUNTS["grid_candidates"] == before["grid_candidates"] + 1


def test_output_modes_round_trip(blob_pair, image):
    from pycocotools import mask as mask_utils

    _, ours_blob = blob_pair
    kwargs = dict(points_per_side=4, pred_iou_thresh=0.6, stability_score_thresh=0.5)
    binary = SamAutomaticMaskGenerator(ours_blob, **kwargs).generate(image)
    rle = SamAutomaticMaskGenerator(ours_blob, output_mode="uncompressed_rle", **kwargs).generate(
        image
    )
    coco = SamAutomaticMaskGenerator(ours_blob, output_mode="coco_rle", **kwargs).generate(image)
    assert len(binary) == len(rle) == len(coco) > 0
    for b, r, c in zip(binary, rle, coco):
        assert b["segmentation"].dtype == bool and b["segmentation"].shape == image.shape[:2]
        np.testing.assert_array_equal(
            official_amg.rle_to_mask(r["segmentation"]), b["segmentation"]
        )
        np.testing.assert_array_equal(
            mask_utils.decode(c["segmentation"]).astype(bool), b["segmentation"]
        )
        assert b["area"] == int(b["segmentation"].sum()) == int(mask_utils.area(c["segmentation"]))


# ----------------------------------------------------------------------------- helpers vs official


def test_device_helpers_match_official():
    rng = np.random.default_rng(0)
    masks = rng.random((12, 37, 29)) < 0.02
    masks[3] = False  # empty mask -> [0, 0, 0, 0]
    np.testing.assert_array_equal(
        np.asarray(amg.masks_to_boxes(masks)),
        official_amg.batched_mask_to_box(torch.as_tensor(masks)).numpy(),
    )
    logits = rng.standard_normal((6, 20, 30)).astype(np.float32) * 2
    logits[0] = -5.0  # empty union: 0 / 0 = NaN in both
    np.testing.assert_allclose(
        np.asarray(amg.stability_scores(logits, 0.0, 1.0)),
        official_amg.calculate_stability_score(torch.as_tensor(logits), 0.0, 1.0).numpy(),
        rtol=1e-6,
    )
    for r in (rng.random((9, 40, 33)) < 0.5, np.zeros((1, 5, 4), bool), np.ones((1, 5, 4), bool)):
        expected = official_amg.mask_to_rle_pytorch(torch.as_tensor(r))
        assert [amg.mask_to_rle(m) for m in r] == expected
        for m, e in zip(r, expected):
            np.testing.assert_array_equal(amg.rle_to_mask(e), m)
    assert amg.generate_crop_boxes((300, 451), 2, 512 / 1500) == official_amg.generate_crop_boxes(
        (300, 451), 2, 512 / 1500
    )
    for a, b in zip(
        amg.build_all_layer_point_grids(7, 2, 2), official_amg.build_all_layer_point_grids(7, 2, 2)
    ):
        np.testing.assert_array_equal(a, b)


def test_greedy_nms_matches_torchvision_style_nms():
    from torchvision.ops.boxes import batched_nms  # the test stand-in: plain greedy NMS

    rng = np.random.default_rng(1)
    for _ in range(5):
        n = 70
        xy = rng.integers(0, 60, (n, 2))
        wh = rng.integers(0, 25, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        boxes[:3] = 0  # degenerate boxes: IoU 0/0 = NaN never suppresses
        scores = rng.random(n).astype(np.float32)
        expected = batched_nms(
            torch.as_tensor(boxes).float(), torch.as_tensor(scores), torch.zeros(n), 0.5
        )
        got = amg_module.nms(boxes, scores, 0.5)
        np.testing.assert_array_equal(got, expected.numpy())


def test_remove_small_regions_by_hand():
    mask = np.zeros((10, 12), bool)
    mask[1:8, 1:8] = True
    mask[3, 3] = False  # a 1-pixel hole
    mask[8:10, 10:12] = True  # a 4-pixel island (touches nothing, even diagonally)
    filled, changed = amg.remove_small_regions(mask, 3, "holes")
    assert changed and filled[3, 3] and filled.sum() == mask.sum() + 1
    cleaned, changed = amg.remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[8:10, 10:12].any() and cleaned.sum() == 49
    same, changed = amg.remove_small_regions(cleaned, 5, "islands")
    assert not changed and same is cleaned
    only_small = np.zeros((6, 6), bool)
    only_small[0, 0] = True
    only_small[4:6, 4:6] = True
    kept, _ = amg.remove_small_regions(only_small, 10, "islands")  # all small: keep the largest
    assert kept.sum() == 4 and kept[4:6, 4:6].all()


def test_postprocess_small_regions_prefers_unchanged_masks():
    h, w = 20, 20
    clean = np.zeros((h, w), bool)
    clean[2:12, 2:12] = True
    holed = clean.copy()
    holed[6, 6] = False  # after filling equals `clean`: a duplicate that NMS must drop
    island = np.zeros((h, w), bool)
    island[14:19, 14:19] = True
    island[0, 19] = True  # 1-pixel island, removed; its box shrinks from the corner
    masks = np.stack([holed, clean, island])
    data = {
        "masks": masks,
        "areas": masks.sum((1, 2)),
        "boxes": amg.masks_to_boxes_np(masks),
        "iou_preds": np.array([0.9, 0.8, 0.7], np.float32),
        "stability_score": np.ones(3, np.float32),
        "points": np.zeros((3, 2)),
        "crop_boxes": np.tile([0, 0, w, h], (3, 1)),
    }
    out = SamAutomaticMaskGenerator.postprocess_small_regions(data, min_area=4, nms_thresh=0.7)
    # Unchanged `clean` (score 1) beats changed `holed` (score 0); `island` survives, cleaned.
    assert len(out["masks"]) == 2
    np.testing.assert_array_equal(out["masks"][0], clean)
    assert out["iou_preds"][0] == np.float32(0.8)
    assert not out["masks"][1][0, 19] and out["areas"][1] == 25
    assert out["boxes"][1].tolist() == [14, 14, 18, 18]


def test_bad_arguments_have_clear_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="exactly one of points_per_side and point_grids"):
        SamAutomaticMaskGenerator(ours, points_per_side=None)
    with pytest.raises(ValueError, match="one per layer"):
        SamAutomaticMaskGenerator(
            ours, points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1
        )
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(ours, output_mode="png")
    with pytest.raises(ValueError, match="uint8"):
        SamAutomaticMaskGenerator(ours, points_per_side=2).generate(np.zeros((8, 8, 3), np.float32))
