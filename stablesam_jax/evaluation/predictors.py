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
from ..utils.embedding import ImageEmbedding
from ..utils.transforms import ResizeLongestSide
from . import metrics
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


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("alpha_key",))
def _decode(graphdef, state, features, index, coords, labels, boxes, box_valid, *, alpha_key):
    """Single-mask decode of a prompt batch on image `index` of an encoded batch."""
    model = nnx.merge(graphdef, state)
    embedding = jax.lax.dynamic_index_in_dim(features, index, axis=0, keepdims=True)
    low_res, iou, intermediates = model.decode_padded(
        embedding, coords, labels, boxes, box_valid, multimask_output=False
    )
    alpha = None if alpha_key is None else intermediates[alpha_key][:, 0]
    return low_res[:, 0], iou[:, 0], alpha


class SamEvalPredictor:
    """A JAX `Sam` (or Stable-SAM) behind the `Predictor` interface, sharded over `mesh`.

    Preprocessing is `SamPredictor`'s (PIL resize of the long side, normalize, zero-pad), so its
    masks are the ones `SamPredictor.predict(..., multimask_output=False)` gives.
    """

    def __init__(self, model: Sam, *, mesh: jax.sharding.Mesh | None = None, max_points: int = 10):
        self.model = model
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
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images must be uint8 HxWx3, got {image.dtype} {image.shape}")
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

    def _dispatch(self, embedding: ImageEmbedding, prompts: PromptBatch, rows: int | None):
        """Decodes all prompts in one call; `rows` pads the batch (default: to the device count).
        Returns device arrays (low-res logits, predicted IoU, a1 or None): nothing waits."""
        count = len(prompts)
        rows = round_up(max(rows or count, count), self.num_devices)
        original = embedding.original_size
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
            alpha_key=self.alpha_key,
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
        low_res, iou, alpha = self._dispatch(embedding, prompts, rows)
        masks = masks_at_original_size(
            self.model.img_size, low_res, embedding.input_size, embedding.original_size
        )
        return Prediction(
            np.asarray(masks)[:count],
            np.asarray(iou)[:count],
            None if alpha is None else np.asarray(alpha)[:count],
        )

    def predict_metrics(
        self, sample: Sample, embedding: ImageEmbedding, prompts: PromptBatch
    ) -> Callable[[], dict[str, float]]:
        """Upsampling, thresholding and the metrics' pixel counts on the device; only counts come
        back. Returns a function that waits for them and gives the host metrics' dict, so the
        caller can queue further work first."""
        gt_mask = sample.device_mask(self._replicated)
        count = len(prompts)
        low_res, _, alpha = self._dispatch(embedding, prompts, None)
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
                values["drp_a1"] = float(np.mean(np.asarray(alpha)[:count]))
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
        if isinstance(model, ModelSpec):
            model = model.build()
        if isinstance(model, Sam):
            if mesh is None:
                mesh = data_mesh()
            predictors[name] = SamEvalPredictor(model, mesh=mesh, max_points=max_points)
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
