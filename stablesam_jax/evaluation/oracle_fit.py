"""The plugins' ceiling, searched: the best sampling any DSP (with DRP) could do, per prompt.

`oracle` places the DSP's samples by rules (toward or onto the object); a field that helps some
other way escapes them. Searching fields by gradient descent is a poor search: a bilinear sample's
position gets gradients from its four corners only, and with s_p = 4 Adam on (dy, dx) stalls or
diverges. So the search runs on a relaxation that holds every field: each sampled key/value (one
per cell) may be any mixture of the regular keys/values within s_p cells (Chebyshev) of that cell,
with weights >= 0 that sum to at most c, one c >= 0 per prompt. A DSP sample at p + dp with
|dp| <= s_p is such a mixture (its four bilinear corners lie in the window; zero padding loses
weight: the mixture's extra "nothing" column), and so is DRP's a1 S + a2 I (c = a1 + a2). The
mixtures are fitted per prompt to the ground truth with Adam on the training loss (BCE + dice in
the low-res frame), starting next to SAM (each sample its own cell, c = 1). The best mixture
bounds what the plugins could gain at that place for that prompt (loosely: a mixture can average
a window, which no field can); the fit finds part of it, more with more `steps` (the loss may
still be falling at the last one), so its masks are a lower estimate of that bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..modeling.forward import postprocess_logits
from ..modeling.plugins import FixedMixture
from ..modeling.sam import Sam
from ..predictor import SamPredictor
from ..training.losses import dice_loss, sigmoid_bce
from ..utils.progress import Progress
from .diagnostics import mask_on_grid
from .metrics import mask_iou_batch, stability_score
from .oracle import dsp_plugins, prompt_masks
from .sources import load_with_prompts

# Softmax logit of a sample's own cell at the start (the others 0): 99.6% of the weight on it
# for an 81-cell window, next to SAM; Adam's normalized steps still move the small weights.
SELF_LOGIT = 10.0
DEFAULT_STEPS = 100
DEFAULT_LEARNING_RATE = 0.1


def window_mask(grid: tuple[int, int], radius: float) -> np.ndarray:
    """bool [H*W, H*W + 1]: cell j lies within `radius` cells of cell i in both y and x; the last
    column (reading nothing, as a sample off the map does) is always allowed."""
    h, w = grid
    cells = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    near = (np.abs(cells[:, None, :] - cells[None, :, :]) <= radius).all(-1)  # [H*W, H*W]
    return np.concatenate([near, np.ones((h * w, 1), bool)], axis=1)


def mixture_weights(logits: jax.Array, scale: jax.Array, window: jax.Array) -> jax.Array:
    """logits [N, N + 1], scale [] (softplus gives c), window bool [N, N + 1] -> weights [N, N]:
    a softmax over each row's window times c, the "nothing" column dropped."""
    masked = jnp.where(window, logits, -jnp.inf)
    return (jax.nn.softmax(masked, axis=-1) * jax.nn.softplus(scale))[:, :-1]


def initial_logits(window: np.ndarray) -> np.ndarray:
    """float32 [N, N + 1]: SELF_LOGIT on each cell's own column, 0 elsewhere."""
    n = window.shape[0]
    logits = np.zeros(window.shape, np.float32)
    logits[np.arange(n), np.arange(n)] = SELF_LOGIT
    return logits


def mixture_model(model: Sam) -> Sam:
    """A copy of `model` (SAM with DSPs) whose DSPs read through a `FixedMixture` (identity)."""
    model = nnx.clone(model)
    dsps = dsp_plugins(model)
    if not dsps:
        raise ValueError("the mixture oracle needs SAM with DSP plugins (build_stable_sam)")
    n = int(np.prod(model.prompt_encoder.image_embedding_size))
    for dsp in dsps:
        dsp.fixed_mixture = FixedMixture(jnp.eye(n, dtype=jnp.float32))
    return model


def _row(x: jax.Array | None) -> jax.Array | None:
    return None if x is None else x[None]


# Steps, learning rate and free_scale are traced, not static: every fitted row of a prompt
# signature shares one executable (each holds thousands of JIT memory maps on the CPU).
@functools.partial(jax.jit, static_argnums=(0,))
def _fit(
    graphdef,
    fixed,
    rest,
    embedding,
    prompts,
    target,
    window,
    start,
    *,
    steps,
    learning_rate,
    free_scale,
):
    """Per prompt (vmapped): Adam on each DSP's mixture. embedding [1, h, w, C]; prompts: dict of
    [P, ...]; target [L, L] in [0, 1]; window, start: `window_mask`, `initial_logits`. Returns
    low-res logits [P, L, L], losses before and after [P], c per DSP [P, n_dsp]."""
    leaves, treedef = jax.tree.flatten(fixed)
    optimizer = optax.adam(learning_rate)

    def logits_of(params, prompt):
        weights = [mixture_weights(lg, s, window) for lg, s in zip(*params)]
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights), rest)
        low, _, _ = model.decode(
            embedding,
            _row(prompt.get("point_coords")),
            _row(prompt.get("point_labels")),
            _row(prompt.get("boxes")),
            None,
            multimask_output=False,
        )
        return low[:, 0]  # [1, L, L]

    def loss_of(params, prompt):
        logits = logits_of(params, prompt)
        return (sigmoid_bce(logits, target[None]) + dice_loss(logits, target[None]))[0]

    def one_prompt(prompt):
        scale = jnp.asarray(np.log(np.expm1(1.0)), jnp.float32)  # softplus -> c = 1
        params = ([start] * len(leaves), [scale] * len(leaves))
        before = loss_of(params, prompt)

        def step(_, carry):
            params, opt_state = carry
            grads = jax.grad(loss_of)(params, prompt)
            # c stays 1 unless free: Adam leaves a parameter with zero gradient alone.
            grads = (grads[0], [jnp.where(free_scale, g, 0.0) for g in grads[1]])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        params, _ = jax.lax.fori_loop(0, steps, step, (params, optimizer.init(params)))
        scales = jnp.stack([jax.nn.softplus(s) for s in params[1]])
        return logits_of(params, prompt)[0], before, loss_of(params, prompt), scales

    return jax.vmap(one_prompt)(prompts)


def fit_mixtures(
    model: Sam,
    embedding: jax.Array,
    prompts: dict[str, np.ndarray],
    target: np.ndarray,
    *,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    radius: float,
    steps: int = DEFAULT_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    free_scale: bool = True,
) -> dict[str, np.ndarray]:
    """Fits the mixtures of `model` (`mixture_model`) for each prompt, one image.

    embedding [h, w, C] (`SamPredictor.features`); prompts: "point_coords" [P, N, 2] and
    "point_labels" [P, N] and/or "boxes" [P, 4] in the input frame; target [L, L], the GT mask's
    share of each low-res pixel (`diagnostics.mask_on_grid`); radius: s_p in cells; free_scale:
    fit c (the DSP with DRP) or keep it 1 (the DSP alone: samples weigh at most 1). Returns
    "masks" bool [P, H, W] at the original size, "loss_before" / "loss_after" [P], "scale" [P, n]
    (each DSP's c)."""
    graphdef, fixed, rest = nnx.split(model, FixedMixture, ...)
    window = window_mask(model.prompt_encoder.image_embedding_size, radius)
    low, before, after, scales = _fit(
        graphdef,
        fixed,
        rest,
        jnp.asarray(embedding)[None],
        {k: jnp.asarray(v) for k, v in prompts.items()},
        jnp.asarray(target, jnp.float32),
        jnp.asarray(window),
        jnp.asarray(initial_logits(window)),
        steps=jnp.int32(steps),
        learning_rate=jnp.float32(learning_rate),
        free_scale=jnp.bool_(free_scale),
    )
    upscaled = postprocess_logits(low, model.img_size, input_size, original_size)
    return {
        "masks": np.asarray(upscaled > model.mask_threshold),
        "loss_before": np.asarray(before),
        "loss_after": np.asarray(after),
        "scale": np.asarray(scales),
    }


# The report's fitted rows, (window radius as a multiple of s_p, c fitted): the DSP alone (c = 1);
# the control that moves nothing (each sample its own cell, weighted, c fitted); the DSP with DRP.
FITTED_ROWS = {
    "mixture_c1": (1.0, False),
    "own_cell_free_c": (0.0, True),
    "mixture_free_c": (1.0, True),
}
CEILING_ROWS = ("none", *FITTED_ROWS)


def prompt_arrays(prompts: list[dict]) -> dict[str, np.ndarray]:
    """The evaluator's prompts of one type (`eval_prompts`) as the arrays `fit_mixtures` takes."""
    arrays = {}
    if prompts[0]["box"] is not None:
        arrays["boxes"] = np.stack([p["box"] for p in prompts]).astype(np.float32)
    if prompts[0]["point_coords"] is not None:
        arrays["point_coords"] = np.stack([p["point_coords"] for p in prompts]).astype(np.float32)
        arrays["point_labels"] = np.stack([p["point_labels"] for p in prompts]).astype(np.int32)
    return arrays


def ceiling_report(
    model: Sam,
    source,
    prompt_types: tuple[str, ...],
    num_prompts: int,
    seed: int = 0,
    *,
    radius: float = 4.0,
    steps: int = DEFAULT_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    progress: bool = True,
) -> dict:
    """{row: {prompt type: {"miou", "msf"}}} (0-100) on `source` with the evaluator's prompts:
    "none" is SAM (`model` with its mixtures the identity: the evaluator's masks); fitted rows
    (`FITTED_ROWS`): "mixture_c1" within `radius` (s_p) and c = 1 (what any DSP field could do),
    "own_cell_free_c" each sample its own cell with a weight <= c, c fitted (moving nothing),
    "mixture_free_c" within `radius` with c fitted (any DSP with DRP). Fitted rows also give
    "loss_before" / "loss_after" (mean) and "scale" (mean c). Memory: the weights are
    [H*W, H*W + 1] per prompt, cheap on the demo's 16 x 16 map; on SAM's 64 x 64 map (67 MB per
    prompt, four times that with Adam's state) give few prompts per image."""
    model = mixture_model(model)
    predictor = SamPredictor(model)
    low_res = 4 * model.prompt_encoder.image_embedding_size[0]
    rows: dict = {row: {t: {"iou": [], "sf": []} for t in prompt_types} for row in CEILING_ROWS}
    status = Progress(len(source), "plugin ceiling", enabled=progress)
    for index in range(len(source)):
        sample, prompts = load_with_prompts(source, index, prompt_types, num_prompts, seed)
        if prompts is None:
            continue
        predictor.set_image(sample.image)
        target = mask_on_grid(sample.mask, model.img_size, low_res)
        for prompt_type in prompt_types:
            sam_masks = prompt_masks(predictor, prompts[prompt_type])  # identity mixtures: SAM
            _add(rows["none"][prompt_type], sam_masks, sample.mask)
            arrays = prompt_arrays(prompts[prompt_type])
            for row, (reach, free_scale) in FITTED_ROWS.items():
                out = fit_mixtures(
                    model,
                    predictor.features,
                    arrays,
                    target,
                    input_size=predictor.input_size,
                    original_size=predictor.original_size,
                    radius=reach * float(np.ceil(radius)),  # a corner of p + dp
                    steps=steps,
                    learning_rate=learning_rate,
                    free_scale=free_scale,
                )
                _add(rows[row][prompt_type], out["masks"], sample.mask)
                for key in ("loss_before", "loss_after", "scale"):
                    rows[row][prompt_type].setdefault(key, []).append(float(out[key].mean()))
        status.update(index + 1)
    return {row: {t: _summary(cells[t], row) for t in prompt_types} for row, cells in rows.items()}


def _add(cell: dict, masks: np.ndarray, gt: np.ndarray) -> None:
    cell["iou"].append(float(mask_iou_batch(masks, gt).mean()))
    cell["sf"].append(stability_score(masks))


def _summary(cell: dict, row: str) -> dict:
    summary = {
        "miou": 100.0 * float(np.mean(cell["iou"])),
        "msf": 100.0 * float(np.mean(cell["sf"])),
    }
    if row in FITTED_ROWS:
        summary.update({k: float(np.mean(cell[k])) for k in ("loss_before", "loss_after", "scale")})
    return summary
