"""Mask losses against HQ-SAM's PyTorch loss code (re-typed below from HQ-SAM's
`train/utils/loss_mask.py`) and hand-computed values."""

import pytest

pytest.importorskip("torch")  # without torch (CI's Python 3.12 lane): skipped, not an error

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stablesam_jax.training import losses

pytestmark = pytest.mark.torch_reference


# ---- HQ-SAM's reference (torch), the candidate points passed in instead of torch.rand ----------
def torch_point_sample(maps, points):
    # maps [B, 1, H, W], points [B, P, 2] -> [B, 1, P]
    return F.grid_sample(maps, 2.0 * points.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def torch_uncertain_points(logits, candidates, random_points, num_uncertain):
    num_boxes, num_sampled = candidates.shape[:2]
    uncertainty = -torch.abs(torch_point_sample(logits, candidates))
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
    idx = idx + num_sampled * torch.arange(num_boxes)[:, None]
    chosen = candidates.reshape(-1, 2)[idx.reshape(-1), :].reshape(num_boxes, num_uncertain, 2)
    return torch.cat([chosen, random_points], dim=1)


def torch_sigmoid_ce(inputs, targets, num_masks):
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def torch_dice(inputs, targets, num_masks):
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


@pytest.fixture
def maps():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(3, 12, 16)).astype(np.float32)
    targets = rng.random((3, 12, 16)).astype(np.float32)
    return logits, targets


def test_point_sample_matches_grid_sample(maps):
    logits, _ = maps
    rng = np.random.default_rng(1)
    points = rng.random((3, 50, 2)).astype(np.float32)
    points[:, :4] = [[0, 0], [1, 1], [0, 1], [0.01, 0.99]]  # borders: zero padding matters
    ours = np.asarray(losses.point_sample(jnp.asarray(logits), jnp.asarray(points)))
    ref = torch_point_sample(_t(logits)[:, None], _t(points))[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_point_sample_at_pixel_centres_returns_pixels(maps):
    logits, _ = maps
    ys, xs = np.array([0, 5, 11]), np.array([0, 7, 15])
    points = np.stack([(xs + 0.5) / 16, (ys + 0.5) / 12], axis=-1)[None].repeat(3, 0)
    ours = np.asarray(losses.point_sample(jnp.asarray(logits), jnp.asarray(points, jnp.float32)))
    np.testing.assert_allclose(ours, logits[:, ys, xs], rtol=1e-6)


def test_uncertain_point_selection_matches_hqsam(maps):
    logits, _ = maps
    rng = np.random.default_rng(2)
    candidates = rng.random((3, 90, 2)).astype(np.float32)
    random_points = rng.random((3, 10, 2)).astype(np.float32)
    ours = losses.select_uncertain_points(
        jnp.asarray(logits), jnp.asarray(candidates), jnp.asarray(random_points), 20
    )
    ref = torch_uncertain_points(_t(logits)[:, None], _t(candidates), _t(random_points), 20)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=0, atol=0)


def test_sample_points_prefers_uncertain_region():
    # Left half: logits near 0 (uncertain); right half: confident. 75% of 40 points = 30 must
    # come from the left half (the oversampled pool holds ~60 left-half candidates).
    logits = np.full((2, 16, 16), 20.0, np.float32)
    logits[:, :, :8] = 0.01
    points = losses.sample_points(jax.random.key(0), jnp.asarray(logits), 40, 3.0, 0.75)
    assert points.shape == (2, 40, 2)
    x = np.asarray(points[..., 0])
    assert (x[:, :30] < 0.5).all()
    assert ((x >= 0) & (x <= 1)).all()


def test_point_loss_matches_hqsam_at_the_same_points(maps):
    logits, targets = maps
    key = jax.random.key(3)
    loss, parts = losses.mask_loss(
        jnp.asarray(logits), jnp.asarray(targets), key, num_points=64, oversample_ratio=3.0
    )
    points = losses.sample_points(key, jnp.asarray(logits), 64, 3.0, 0.75)
    pl = torch_point_sample(_t(logits)[:, None], _t(points))[:, 0]
    pt = torch_point_sample(_t(targets)[:, None], _t(points))[:, 0]
    bce, dice = torch_sigmoid_ce(pl, pt, 3).item(), torch_dice(pl, pt, 3).item()
    np.testing.assert_allclose(float(parts["bce"]), bce, rtol=1e-5)
    np.testing.assert_allclose(float(parts["dice"]), dice, rtol=1e-5)
    np.testing.assert_allclose(float(loss), bce + dice, rtol=1e-5)


def test_dense_loss_matches_torch(maps):
    logits, targets = maps
    loss, parts = losses.mask_loss(
        jnp.asarray(logits), jnp.asarray(targets), sampling="dense", bce_weight=2.0
    )
    tl, tt = _t(logits).flatten(1), _t(targets).flatten(1)
    bce, dice = torch_sigmoid_ce(tl, tt, 3).item(), torch_dice(tl, tt, 3).item()
    np.testing.assert_allclose(float(parts["bce"]), bce, rtol=1e-5)
    np.testing.assert_allclose(float(parts["dice"]), dice, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 2 * bce + dice, rtol=1e-5)


def test_hand_computed_values():
    # Logit 0 everywhere, target all ones, 4 pixels: BCE = log 2; dice = 1 - (2*2 + 1)/(2 + 4 + 1).
    logits, targets = jnp.zeros((1, 2, 2)), jnp.ones((1, 2, 2))
    assert float(losses.sigmoid_bce(logits, targets)[0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(losses.dice_loss(logits, targets)[0]) == pytest.approx(2 / 7, rel=1e-6)
    # Confident and right: both losses vanish (dice to within its +1 smoothing: 1 - 5/5).
    confident = jnp.full((1, 2, 2), 30.0)
    assert float(losses.sigmoid_bce(confident, targets)[0]) < 1e-12
    assert float(losses.dice_loss(confident, targets)[0]) == pytest.approx(0.0, abs=1e-6)


def test_downsample_mask_is_block_fraction():
    mask = np.zeros((1, 8, 8), bool)
    mask[0, :4, :4] = True
    mask[0, 5, 6] = True
    out = np.asarray(losses.downsample_mask(jnp.asarray(mask), 2))
    np.testing.assert_array_equal(out, [[[1.0, 0.0], [0.0, 1 / 16]]])
    with pytest.raises(ValueError, match="block-averaged"):
        losses.downsample_mask(jnp.asarray(mask), 3)


def test_mask_iou_by_hand():
    logits = jnp.asarray([[[1.0, 1.0], [-1.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    targets = jnp.asarray([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(np.asarray(losses.mask_iou(logits, targets)), [1 / 3, 1.0])


def test_bad_arguments_are_named():
    x = jnp.zeros((1, 4, 4))
    with pytest.raises(ValueError, match="sampling"):
        losses.mask_loss(x, x, sampling="sparse")
    with pytest.raises(ValueError, match="PRNG key"):
        losses.mask_loss(x, x)
    with pytest.raises(ValueError, match="shape"):
        losses.mask_loss(x, jnp.zeros((1, 4, 5)), sampling="dense")
