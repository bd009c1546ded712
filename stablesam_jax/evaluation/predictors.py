"""Models behind the `Predictor` protocol: the ground-truth oracle and JAX `Sam` / Stable-SAM.

Devices. Weights are replicated over a 1-D `data` mesh of all local devices; the images of an
encoder batch and the prompts of a decode call are sharded over it (batches are padded to a
multiple of the device count and the padding is sliced off), so one device or eight run the same
code. Models whose image encoders are identical (SAM, Stable-SAM, DT-SAM and PT-SAM all keep SAM's
frozen encoder) share one image embedding per image (`encoder_groups`). Masks come back to the
host only through `predict` (COCO, custom metrics); `predict_metrics` keeps them on the device
(`device_metrics`).

Compilation: one encoder (per encoder and batch size), one decoder per model (prompt batches are
padded to `num_prompts` rows and max-points slots, whatever the type), and one upsampling/metrics
program per distinct original image size, shared by all models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..constants import PAD_LABEL, PIXEL_MEAN, PIXEL_STD
from ..modeling.sam import Sam
from ..utils.batching import pad_rows, round_up
from ..utils.chunking import plan_decode, run_in_chunks
from ..utils.embedding import ImageEmbedding
from ..utils.transforms import ResizeLongestSide
from ..utils.validation import validate_image, validate_prompts
from . import diagnostics, metrics
from .device_metrics import masks_at_original_size, metric_counts, metrics_from_counts
from .interface import Prediction, Predictor, PromptBatch, Sample
from .protocol import check_name
from .specs import ModelSpec

DATA_AXIS = "data"
# The one routing weight a1 of the first plugin layer (the paper's Stable-SAM has one, layer 1).
DRP_ALPHA_SUFFIX = "/drp_alpha"


class OraclePredictor:
    """Returns the ground-truth mask for every prompt: the loop must report 100 everywhere."""

    def embed(self, images):
        return [None] * len(images)

    def predict(self, sample: Sample, embedding, prompts: PromptBatch) -> Prediction:
        if sample.mask is None:
            raise ValueError("OraclePredictor needs samples with a ground-truth mask")
        masks = np.broadcast_to(sample.mask, (len(prompts), *sample.mask.shape))
        return Prediction(np.array(masks), np.ones(len(prompts), np.float32))


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """1-D mesh `('data',)` over `devices` (default: all local devices). Auto axes: the Stable-SAM
    plugin's bilinear gather does not type-check under Explicit sharding."""
    devices = list(jax.local_devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(encoder_graphdef, encoder_state, pixels):
    # The encoder alone: SAM, Stable-SAM, DT-SAM and PT-SAM share one compilation.
    return nnx.merge(encoder_graphdef, encoder_state)(pixels)


@functools.partial(
    jax.jit, static_argnums=(0,), static_argnames=("alpha_key", "diagnose", "hq_token_only")
)
def _decode(
    graphdef, state, features, index, *prompts, alpha_key, diagnose=None, hq_token_only=False
):
    """Single-mask decode of a prompt batch (coords, labels, boxes, box_valid) on image `index` of
    an encoded batch. `diagnose` ((layer, offset scale), or None) adds
    `diagnostics.decode_diagnostics` on the two further arguments (grid mask, prompt count)."""
    model = nnx.merge(graphdef, state)
    embedding = jax.lax.dynamic_index_in_dim(features, index, axis=0, keepdims=True)
    prompts, diagnosed = prompts[:4], prompts[4:]
    low_res, iou, intermediates = model.decode_padded(
        embedding,
        *prompts,
        multimask_output=False,
        return_intermediates=diagnose is not None,
        hq_token_only=hq_token_only,
    )
    alpha = None if alpha_key is None else intermediates[alpha_key]  # [B, 2]
    if diagnose is None:
        return low_res[:, 0], iou[:, 0], alpha
    layer, offset_scale = diagnose
    extra = diagnostics.decode_diagnostics(
        intermediates, *diagnosed, layer=layer, offset_scale=offset_scale
    )
    return low_res[:, 0], iou[:, 0], alpha, extra


class SamEvalPredictor:
    """A JAX `Sam` (or Stable-SAM) behind the `Predictor` interface, sharded over `mesh`.

    Preprocessing is `SamPredictor`'s (PIL resize of the long side, normalize, zero-pad), so its
    masks are the ones `SamPredictor.predict(..., multimask_output=False)` gives (with
    `hq_token_only`, HQ-SAM's `predict(..., hq_token_only=True)`).
    """

    def __init__(
        self,
        model: Sam,
        *,
        mesh: jax.sharding.Mesh | None = None,
        max_points: int = 10,
        hq_token_only: bool = False,
    ):
        if hq_token_only and not model.config.hq:
            raise ValueError("hq_token_only=True needs an HQ-SAM model (hq_vit_*); this one is SAM")
        self.model = model
        self.hq_token_only = hq_token_only
        self.mesh = mesh if mesh is not None else data_mesh()
        self.num_devices = self.mesh.size
        self.max_points = max_points
        self.transform = ResizeLongestSide(model.img_size)
        self._replicated = NamedSharding(self.mesh, P())
        self._batch_sharded = NamedSharding(self.mesh, P(DATA_AXIS))
        self._graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, self._replicated)
        self._encoder_graphdef = nnx.graphdef(model.image_encoder)
        self._encoder_state = self._state["image_encoder"]
        self.alpha_key = self._find_alpha_key(model)
        self.diagnose = diagnostics.dsp_block(model.plugin_config)
        self._grid_masks = diagnostics.GridMasks(
            model.img_size, model.config.image_embedding_size, self._replicated
        )

    @staticmethod
    def _find_alpha_key(model: Sam) -> str | None:
        config = model.plugin_config
        if config is None or not config.use_drp or not config.dsp_layers:
            return None
        return f"layer{min(config.dsp_layers)}{DRP_ALPHA_SUFFIX}"

    def same_encoder(self, other) -> bool:
        """True when `other` computes identical embeddings (same graph, weights and mesh)."""
        if not isinstance(other, SamEvalPredictor) or other.mesh != self.mesh:
            return False
        if nnx.graphdef(self.model.image_encoder) != nnx.graphdef(other.model.image_encoder):
            return False
        mine = jax.tree.leaves(nnx.state(self.model.image_encoder))
        theirs = jax.tree.leaves(nnx.state(other.model.image_encoder))
        return len(mine) == len(theirs) and all(
            a.shape == b.shape and bool(jnp.array_equal(a, b)) for a, b in zip(mine, theirs)
        )

    def embed(self, images: Sequence[np.ndarray], rows: int | None = None) -> list[ImageEmbedding]:
        """Encodes the images in one call, the batch padded to `rows` (default: the image count)
        rounded up to the device count. A fixed `rows` keeps a dataset's last, shorter batch from
        compiling the encoder again."""
        size = self.model.img_size
        rows = round_up(max(rows or len(images), len(images)), self.num_devices)
        pixels = np.zeros((rows, size, size, 3), np.float32)
        mean, std = np.asarray(PIXEL_MEAN, np.float32), np.asarray(PIXEL_STD, np.float32)
        input_sizes = []
        for i, image in enumerate(images):
            image = validate_image(image, size)
            resized = self.transform.apply_image(np.ascontiguousarray(image))
            pixels[i, : resized.shape[0], : resized.shape[1]] = (resized - mean) / std
            input_sizes.append(resized.shape[:2])
        pixels = jax.device_put(pixels, self._batch_sharded)
        features = _encode(self._encoder_graphdef, self._encoder_state, pixels)
        features = jax.device_put(features, self._replicated)
        return [
            ImageEmbedding(
                features,
                tuple(images[i].shape[:2]),
                tuple(input_sizes[i]),
                self.model.model_type,
                index=i,
            )
            for i in range(len(images))
        ]

    def _dispatch(
        self,
        embedding: ImageEmbedding,
        prompts: PromptBatch,
        rows: int | None,
        grid_mask: jax.Array | None = None,
    ):
        """Decodes all prompts in one call; `rows` pads the batch (default: to the device count).
        Returns device arrays (low-res logits, predicted IoU, a1 or None, and with a `grid_mask`
        the `diagnostics.decode_diagnostics` dict): nothing waits."""
        count = len(prompts)
        rows = round_up(max(rows or count, count), self.num_devices)
        original = embedding.original_size
        # Padded slots (PAD_LABEL points, rows without a box) are allowed here, nothing else.
        validate_prompts(
            prompts.point_coords,
            prompts.point_labels,
            prompts.boxes,
            original,
            allow_pad=True,
            box_valid=prompts.box_valid,
        )
        coords = self.transform.apply_coords(prompts.point_coords, original).astype(np.float32)
        boxes = self.transform.apply_boxes(prompts.boxes, original).astype(np.float32)
        labels = prompts.point_labels.astype(np.int32)
        if coords.shape[1] < self.max_points:
            # One decoder shape for every prompt type: pad every batch to max_points slots.
            extra = self.max_points - coords.shape[1]
            coords = np.pad(coords, ((0, 0), (0, extra), (0, 0)))
            labels = np.pad(labels, ((0, 0), (0, extra)), constant_values=PAD_LABEL)
        arrays = [
            jax.device_put(pad_rows(a, rows), self._batch_sharded)
            for a in (coords, labels, boxes, prompts.box_valid)
        ]
        return _decode(
            self._graphdef,
            self._state,
            embedding.features,
            embedding.index,
            *arrays,
            *(() if grid_mask is None else (grid_mask, jnp.int32(count))),
            alpha_key=self.alpha_key,
            diagnose=None if grid_mask is None else self.diagnose,
            hq_token_only=self.hq_token_only,
        )

    def predict(
        self,
        sample: Sample,
        embedding: ImageEmbedding,
        prompts: PromptBatch,
        rows: int | None = None,
    ) -> Prediction:
        """Masks at the original size on the host (what COCO and custom metrics need)."""
        count = len(prompts)
        padded = max(rows or count, count)
        chunk = self._chunk_rows(padded, embedding.original_size)
        if chunk < padded:  # too big for the devices: equal-size calls, one compile

            def part(*fields):
                p = self.predict(sample, embedding, PromptBatch(*fields), rows=chunk)
                routing = () if p.drp_a1 is None else (p.drp_a1, p.drp_a2)
                return (p.masks, p.iou_predictions, *routing)

            fields = [prompts.point_coords, prompts.point_labels, prompts.boxes, prompts.box_valid]
            return Prediction(*run_in_chunks(part, count, chunk, fields))
        low_res, iou, alpha = self._dispatch(embedding, prompts, rows)
        masks = masks_at_original_size(
            self.model.img_size, low_res, embedding.input_size, embedding.original_size
        )
        alpha = None if alpha is None else np.asarray(alpha)[:count]
        return Prediction(
            np.asarray(masks)[:count],
            np.asarray(iou)[:count],
            None if alpha is None else alpha[:, 0],
            None if alpha is None else alpha[:, 1],
        )

    def _chunk_rows(self, rows: int, original_size) -> int:
        """Prompt rows per `predict` call (`utils.chunking.plan_decode`, per device of the mesh):
        `rows` unless they would not fit; one single-mask upsampling holds 3 s^2 floats and the
        mask per prompt."""
        cfg, (h, w) = self.model.config, original_size
        return plan_decode(
            rows,
            grid=cfg.image_embedding_size,
            channels=cfg.prompt_embed_dim,
            plugins=self.model.plugin_config is not None,
            masks=1,
            original_size=(h, w),
            upsample_bytes=12 * cfg.img_size**2 + 5 * h * w,
            logits=False,
            buckets=(self.num_devices,),
            device=self.mesh.devices.flat[0],
            multiple=self.num_devices,
        )

    def predict_metrics(
        self,
        sample: Sample,
        embedding: ImageEmbedding,
        prompts: PromptBatch,
        with_diagnostics: bool = False,
    ) -> Callable[[], dict]:
        """Upsampling, thresholding and the metrics' pixel counts on the device; only counts come
        back. Returns a function that waits for them and gives the host metrics' dict, so the
        caller can queue further work first. `with_diagnostics` adds the image's
        `diagnostics.host_values` (from the same decode call)."""
        gt_mask = sample.device_mask(self._replicated)
        count = len(prompts)
        grid_mask = self._grid_masks(sample) if with_diagnostics else None
        low_res, _, alpha, *extra = self._dispatch(embedding, prompts, None, grid_mask)
        counts = metric_counts(
            self.model.img_size,
            low_res,
            embedding.input_size,
            embedding.original_size,
            metrics.boundary_width(embedding.original_size),
            gt_mask,
        )

        def result() -> dict[str, float]:
            values = metrics_from_counts(jax.device_get(counts), count)
            if alpha is not None:
                a1, a2 = np.asarray(alpha)[:count].mean(axis=0)
                values["drp_a1"], values["drp_a2"] = float(a1), float(a2)
            if extra:
                values.update(diagnostics.host_values(extra[0], count))
            return values

        return result


def as_predictors(
    models, *, mesh: jax.sharding.Mesh | None = None, max_points: int = 10
) -> dict[str, Predictor]:
    """{name: Predictor} from a mapping name -> Sam | ModelSpec | Predictor, or a list of specs."""
    if isinstance(models, Mapping):
        items = list(models.items())
    else:
        items = []
        for model in models:
            if not isinstance(model, ModelSpec):
                raise TypeError(
                    "a list of models must hold ModelSpecs (they carry names); pass a dict "
                    f"{{name: model}} for built models, got {type(model).__name__}"
                )
            items.append((model.name, model))
    if not items:
        raise ValueError("no models to evaluate")
    predictors: dict[str, Predictor] = {}
    for name, model in items:
        check_name(name, "model")
        if name in predictors:
            raise ValueError(f"two models are named {name!r}")
        hq_token_only = False
        if isinstance(model, ModelSpec):
            hq_token_only = model.hq_token_only
            model = model.build()
        if isinstance(model, Sam):
            if mesh is None:
                mesh = data_mesh()
            predictors[name] = SamEvalPredictor(
                model, mesh=mesh, max_points=max_points, hq_token_only=hq_token_only
            )
        elif isinstance(model, Predictor):
            predictors[name] = model
        else:
            raise TypeError(
                f"model {name!r} is a {type(model).__name__}; expected a Sam, a ModelSpec or an "
                "object with embed() and predict() (the Predictor protocol)"
            )
    return predictors


def encoder_groups(predictors: Mapping[str, Predictor]) -> list[list[str]]:
    """Model names grouped so that each group can share one image embedding."""
    groups: list[list[str]] = []
    for name, predictor in predictors.items():
        for group in groups:
            leader = predictors[group[0]]
            if isinstance(leader, SamEvalPredictor) and leader.same_encoder(predictor):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups
