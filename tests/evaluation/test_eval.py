"""The evaluation job (stablesam_jax.evaluation): folder layouts, metrics wiring, COCO wiring.

Expected numbers come from hand computation (oracle and half-right predictors) or from the
independent path `SamPredictor.predict` + `metrics` one prompt at a time.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from pycocotools import mask as mask_utils

from stablesam_jax import SamPredictor, build_sam, build_stable_sam, evaluation
from stablesam_jax import checkpoint as ckpt
from stablesam_jax.data.folders import HQ_EVAL
from stablesam_jax.data.prompts import eval_prompts, image_seed
from stablesam_jax.data.scenes import generate_scene, write_scene_folder
from stablesam_jax.evaluation import device_metrics, loop, metrics
from stablesam_jax.evaluation.coco import evaluate_coco, load_coco, prompted_instances
from stablesam_jax.modeling.common import PluginParam
from stablesam_jax.utils.io import load_image as load_rgb

DEMO_TYPES = ("gt_box", "noisy_box", "one_point", "three_points")


@pytest.fixture(scope="module")
def tiny_models():
    """vit_t SAM and a Stable-SAM with the same SAM weights and perturbed (non-identity) plugins."""
    stable = build_stable_sam("vit_t", seed=0)
    rng = np.random.default_rng(1)
    for _, var in nnx.iter_graph(stable):
        if isinstance(var, PluginParam):
            var.set_value(var[...] + 0.3 * rng.standard_normal(var.shape).astype(np.float32))
    # SAM from the same weights without a second random initialization (slow on a loaded CPU).
    sam = nnx.eval_shape(lambda: build_sam("vit_t", seed=0))
    weights = ckpt.flat_weights(stable, ckpt.is_sam_weight)
    for path, var in nnx.iter_graph(sam):
        if isinstance(var, nnx.Variable):
            var.set_value(jnp.asarray(weights[ckpt.path_name(path)]))
    return sam, stable


def write_all_layouts(root, num=1, size=64):
    """The four HQ layouts under root, plus a plain folder pair of PNGs in separate folders."""
    for layout in HQ_EVAL:
        write_scene_folder(root, layout, num=num, seed=len(layout), size=size)
    image_dir, mask_dir = root / "plain" / "images", root / "plain" / "masks"
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for i in range(num):
        scene = generate_scene((7, i), size=size)
        areas = scene["masks"].reshape(len(scene["masks"]), -1).sum(1)
        Image.fromarray(scene["image"]).save(image_dir / f"plain_{i}.png")
        mask = scene["masks"][int(np.argmax(areas))]
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"plain_{i}.png")
    return image_dir, mask_dir


def layouts_config(root, output_dir, num_prompts=4):
    config = evaluation.base_config(str(output_dir))
    config.data_root = str(root)
    config.num_prompts = num_prompts
    config.progress = False
    config.models.sam = evaluation.model_config("vit_t", "sam", random_init=True)
    for layout in HQ_EVAL:
        config.datasets[layout] = evaluation.layout_dataset_config(layout)
    config.datasets.plain = evaluation.folder_dataset_config(
        str(root / "plain" / "images"), str(root / "plain" / "masks")
    )
    return config


def check_schema(report, models, datasets, prompt_types):
    assert set(report["results"]) == {*datasets, "pooled"}
    for dataset in (*datasets, "pooled"):
        assert list(report["results"][dataset]) == list(models)
        for model in models:
            by_type = report["results"][dataset][model]
            assert list(by_type) == list(prompt_types)
            for values in by_type.values():
                for key in ("miou", "mbiou", "msf"):
                    assert 0.0 <= values[key] <= 100.0
                assert values["num_images"] >= 1


def test_every_layout_runs_through_the_job_with_a_real_model(tmp_path, tiny_models):
    sam, stable = tiny_models
    write_all_layouts(tmp_path / "data")
    config = layouts_config(tmp_path / "data", tmp_path / "out")
    # max_points=3 (three_points is the largest type) as the job itself would choose.
    predictors = {
        "sam": evaluation.SamEvalPredictor(sam, max_points=3),
        "stable_sam": evaluation.SamEvalPredictor(stable, max_points=3),
    }
    report = evaluation.run(config, predictors=predictors)

    datasets = (*HQ_EVAL, "plain")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    check_schema(saved, ("sam", "stable_sam"), datasets, DEMO_TYPES)
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert saved["datasets"]["DIS5K-VD"]["num_images"] == 1
    assert saved["timing"]["encoder_groups"] == [["sam", "stable_sam"]]
    for prompt_type in DEMO_TYPES:
        a1 = saved["results"]["pooled"]["stable_sam"][prompt_type]["drp_a1"]
        assert 0.0 < a1 < 1.0
        assert "drp_a1" not in saved["results"]["pooled"]["sam"][prompt_type]
    names = saved["per_image"]["COIFT"]["names"]
    assert names == ["COIFT/coift_5_00000"]

    table = (tmp_path / "out" / "results.md").read_text()
    for heading in (*datasets, "Pooled", "Mean DRP routing weights a1 / a2"):
        assert heading in table
    assert "| Model | GT Box | Noisy Box | 1 Point | 3 Points |" in table
    pooled = table[table.index("## Pooled") :]
    sam_row = next(line for line in pooled.splitlines() if line.startswith("| sam |"))
    noisy = saved["results"]["pooled"]["sam"]["noisy_box"]
    cell = " / ".join(f"{noisy[k]:.1f}" for k in ("miou", "mbiou", "msf"))
    assert sam_row.split(" | ")[2] == cell  # columns: Model, GT Box, Noisy Box, ...


def test_oracle_scores_100_everywhere_through_the_job(tmp_path):
    write_all_layouts(tmp_path / "data", num=2)
    config = layouts_config(tmp_path / "data", tmp_path / "out", num_prompts=3)
    config.prompt_types = tuple(evaluation.PROMPT_TYPES)
    config.datasets.scenes = evaluation.scenes_dataset_config(num=2, size=64)
    report = evaluation.run(config, predictors={"oracle": evaluation.OraclePredictor()})
    for dataset, per_model in report["results"].items():
        for prompt_type, values in per_model["oracle"].items():
            assert (values["miou"], values["mbiou"], values["msf"]) == (100.0, 100.0, 100.0), (
                dataset,
                prompt_type,
            )
    assert report["results"]["pooled"]["oracle"]["gt_box"]["num_images"] == 12
    assert "| oracle | 100.0 / 100.0 / 100.0 |" in (tmp_path / "out" / "results.md").read_text()


def test_tfds_datasets_run_through_the_job(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from stablesam_jax.data.tfds_builder import build_tfds

    for layout in ("DIS5K-VD", "COIFT"):
        write_scene_folder(tmp_path / "data", layout, num=2, seed=1, size=48)
    builder = build_tfds(tmp_path / "data", tmp_path / "tfds", ["DIS5K-VD", "COIFT"])
    config = evaluation.base_config(str(tmp_path / "out"))
    config.progress = False
    config.num_prompts = 2
    config.models.unused = evaluation.model_config("vit_t", random_init=True)
    for layout in ("DIS5K-VD", "COIFT"):
        config.datasets[layout] = evaluation.tfds_dataset_config(layout, tfds_dir=builder.data_dir)
    report = evaluation.run(config, predictors={"oracle": evaluation.OraclePredictor()})
    assert report["datasets"]["COIFT"]["num_images"] == 2
    assert report["results"]["pooled"]["oracle"]["noisy_box"]["num_images"] == 4
    assert report["results"]["pooled"]["oracle"]["noisy_box"]["miou"] == 100.0


class HalfRightPredictor:
    """Dataset "good": the GT for every prompt. Dataset "half": GT for even prompts, empty for odd."""

    def embed(self, images):
        return [None] * len(images)

    def predict(self, sample, embedding, prompts):
        masks = np.repeat(sample.mask[None], len(prompts), axis=0)
        if sample.name.startswith("half"):
            masks[1::2] = False
        return evaluation.Prediction(masks, np.ones(len(prompts)))


def test_metrics_are_averaged_over_prompts_then_images_and_pooled_over_images():
    def scene(i):
        s = generate_scene((3, i), size=48)
        return s["image"], s["masks"][0]

    datasets = {
        "good": [(*scene(0), "good_0")],
        "half": [(*scene(1), "half_0"), (*scene(2), "half_1")],
    }
    report = evaluation.evaluate_report(
        {"m": HalfRightPredictor()},
        datasets,
        ("gt_box", "one_point"),
        num_prompts=2,
        progress=False,
    )
    results = report["results"]
    # Per image in "half": IoU (1 + 0) / 2, boundary IoU likewise; stability |GT| / 2 / |GT|.
    for prompt_type in ("gt_box", "one_point"):
        assert results["good"]["m"][prompt_type]["miou"] == 100.0
        for key in ("miou", "mbiou", "msf"):
            assert results["half"]["m"][prompt_type][key] == pytest.approx(50.0)
            # Three images: (100 + 50 + 50) / 3, not the mean of the two dataset means (75).
            assert results["pooled"]["m"][prompt_type][key] == pytest.approx(200.0 / 3)
        assert results["pooled"]["m"][prompt_type]["num_images"] == 3


def non_square_sample():
    scene = generate_scene(3, size=256)
    image = np.ascontiguousarray(scene["image"][20:220, 10:160])
    instances = scene["masks"][:, 20:220, 10:160]
    return image, instances[np.argmax(instances.sum(axis=(1, 2)))]


def test_job_equals_sam_predictor_one_prompt_at_a_time(tiny_models):
    """Independent path: `SamPredictor.predict` per prompt + `metrics`, on a non-square image.

    The Stable-SAM model covers SAM's path too (same decode code, plus the plugins and a1).
    """
    _, stable = tiny_models
    image, mask = non_square_sample()
    # 4 prompts and 3 point slots: the decoder compiled for the layout test is reused.
    prompt_types, num, seed = ("noisy_box", "three_points"), 4, 5
    report = evaluation.evaluate_report(
        {"stable_sam": stable},
        {"one": [(image, mask, "img0")]},
        prompt_types,
        num_prompts=num,
        seed=seed,
        progress=False,
    )
    predictor = SamPredictor(stable)
    predictor.set_image(image)
    values = report["per_image"]["one"]["values"]["stable_sam"]
    for prompt_type in prompt_types:
        masks, a1, a2 = [], [], []
        for prompt in eval_prompts(mask, prompt_type, num, image_seed("img0", seed)):
            out = predictor.predict(
                prompt["point_coords"],
                prompt["point_labels"],
                prompt["box"],
                multimask_output=False,
                return_intermediates=True,
            )
            masks.append(out[0][0])
            a1.append(out[3]["layer1/drp_alpha"][0])
            a2.append(out[3]["layer1/drp_alpha"][1])
        job = values[prompt_type]
        expected_iou = 100 * np.mean([metrics.mask_iou(m, mask) for m in masks])
        expected_biou = 100 * np.mean([metrics.boundary_iou(m, mask) for m in masks])
        assert job["miou"][0] == pytest.approx(expected_iou, abs=1e-9)
        assert job["mbiou"][0] == pytest.approx(expected_biou, abs=1e-9)
        assert job["msf"][0] == pytest.approx(
            100 * metrics.stability_score(np.stack(masks)), abs=1e-9
        )
        assert job["drp_a1"][0] == pytest.approx(np.mean(a1), abs=1e-5)
        assert job["drp_a2"][0] == pytest.approx(np.mean(a2), abs=1e-5)
        assert abs(np.mean(a1) - np.mean(a2)) > 1e-4  # the two are not swapped or merged


# --------------------------------------------------------------------------------------------------
# COCO


def write_scene_coco(root, num=2, size=64):
    """A tiny COCO-format instance set from generated scenes (every visible instance)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num + 1):
        scene = generate_scene((11, image_id), size=size, max_objects=3)
        file_name = f"scene_{image_id}.png"
        Image.fromarray(scene["image"]).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for mask in scene["masks"]:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    annotation_file = root / "instances.json"
    annotation_file.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    return annotation_file, image_dir


class CocoOracle:
    """The GT instance masks of whichever image it is shown, in `prompted_instances` order."""

    def __init__(self, annotation_file, image_dir, shift=0):
        coco = load_coco(str(annotation_file))
        self.masks = {}
        for info in coco.loadImgs(coco.getImgIds()):
            image = load_rgb(str(image_dir / info["file_name"]))
            masks = [m for _, m in prompted_instances(coco, info["id"])]
            self.masks[image.tobytes()] = np.roll(np.stack(masks), shift, axis=2)

    def embed(self, images):
        return [image.tobytes() for image in images]

    def predict(self, sample, embedding, prompts):
        masks = self.masks[embedding]
        assert len(prompts) == len(masks) and prompts.box_valid.all()
        return evaluation.Prediction(masks, np.ones(len(masks)))


def test_coco_through_the_job_perfect_masks_give_map_100(tmp_path):
    annotation_file, image_dir = write_scene_coco(tmp_path / "coco")
    config = evaluation.base_config(str(tmp_path / "out"))
    config.progress = False
    config.seed = 3
    config.models.unused = evaluation.model_config("vit_t", random_init=True)
    config.coco.tiny = evaluation.coco_config(str(annotation_file), str(image_dir))
    perfect = CocoOracle(annotation_file, image_dir)
    shifted = CocoOracle(annotation_file, image_dir, shift=6)  # 6 px of 64: clearly damaged
    evaluation.run(config, predictors={"oracle": perfect, "shifted": shifted})

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    num_instances = len(json.loads(annotation_file.read_text())["annotations"])
    assert list(saved["coco"]["tiny"]) == ["oracle", "shifted"]
    for name, by_bin in saved["coco"]["tiny"].items():
        assert list(by_bin) == ["0.5-0.6", "0.6-0.7"]
        for bin_label, values in by_bin.items():
            assert values["num_instances"] == num_instances
            if name == "oracle":
                assert values["segm_mAP"] == pytest.approx(100.0)
                assert values["segm_mAP50"] == pytest.approx(100.0)
                continue
            # The image-major loop must score exactly what coco.evaluate_coco scores directly.
            direct = evaluate_coco(
                str(annotation_file),
                str(image_dir),
                lambda image, boxes: (shifted.masks[image.tobytes()], np.ones(len(boxes))),
                iou_bin=tuple(values["iou_bin"]),
                seed=3,
                progress=False,
            )
            assert values["segm_mAP"] == pytest.approx(direct["segm_mAP"], abs=1e-9)
            assert values["segm_mAP50"] == pytest.approx(direct["segm_mAP50"], abs=1e-9)
            assert values["segm_mAP"] < 90.0, bin_label
    table = (tmp_path / "out" / "results.md").read_text()
    assert "## tiny: noisy-box mask AP" in table
    assert "| oracle | 100.0 | 100.0 | 100.0 | 100.0 |" in table


def test_coco_predict_fn_matches_sam_predictor(tiny_models):
    _, stable = tiny_models
    image, _ = non_square_sample()  # shapes as above: compiled functions are reused
    boxes = np.array([[10, 20, 120, 150], [50, 5, 149, 199], [0, 0, 30, 40]], np.float32)
    job_predictor = evaluation.SamEvalPredictor(stable, max_points=3)
    masks, scores = evaluation.coco_predict_fn(job_predictor)(image, boxes)
    reference = SamPredictor(stable)
    reference.set_image(image)
    for box, mask, score in zip(boxes, masks, scores):
        # return_intermediates as in the test above: its compiled decoder is reused.
        expected, expected_iou, _, _ = reference.predict(
            box=box, multimask_output=False, return_intermediates=True
        )
        np.testing.assert_array_equal(mask, expected[0])
        assert score == pytest.approx(expected_iou[0], rel=1e-5, abs=1e-6)


def test_mask_upsampling_is_postprocess_masks(tiny_models):
    sam, _ = tiny_models
    low_res = jax.random.normal(jax.random.key(0), (2, 64, 64))
    expected = np.asarray(sam.postprocess_masks(low_res, (256, 171), (300, 200))) > 0
    got = np.asarray(device_metrics.masks_at_original_size(256, low_res, (256, 171), (300, 200)))
    np.testing.assert_array_equal(got, expected)
    assert 0.2 < expected.mean() < 0.8


# --------------------------------------------------------------------------------------------------
# Errors and edge cases


def test_empty_masks_are_skipped_and_counted():
    scene = generate_scene(1, size=48)
    empty = np.zeros((48, 48), bool)
    data = {"d": [(scene["image"], empty, "empty"), (scene["image"], scene["masks"][0], "full")]}
    with pytest.warns(UserWarning, match="empty mask"):
        report = evaluation.evaluate_report(
            {"oracle": evaluation.OraclePredictor()}, data, ("gt_box",), 2, progress=False
        )
    assert report["datasets"]["d"] == {"num_images": 1, "skipped_empty_masks": ["empty"]}
    assert report["per_image"]["d"]["names"] == ["full"]
    assert report["results"]["pooled"]["oracle"]["gt_box"]["miou"] == 100.0


def test_bad_configs_say_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="checkpoint.*random_init"):
        evaluation.ModelSpec("sam", "vit_t").validate()
    with pytest.raises(ValueError, match="plugins"):
        evaluation.ModelSpec("ss", "vit_t", kind="stable_sam", checkpoint="x").validate()
    with pytest.raises(ValueError, match="data_root"):
        evaluation.DatasetSpec("DIS5K-VD").open()
    with pytest.raises(ValueError, match="unknown prompt types"):
        evaluation.evaluate_report({"o": evaluation.OraclePredictor()}, {"d": []}, ("two_points",))
    config = evaluation.base_config(str(tmp_path))
    config.models.sam = evaluation.model_config("vit_t", random_init=True)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluation.run(config)


def test_format_table_of_the_pooled_mapping():
    results = {
        "sam": {"noisy_box": {"miou": 48.84, "mbiou": 42.06, "msf": 39.5, "num_images": 3}},
        "stable_sam": {
            "noisy_box": {"miou": 82.3, "mbiou": 74.1, "msf": 82.34, "num_images": 3, "drp_a1": 0.6}
        },
    }
    table = evaluation.format_table(results)
    lines = table.splitlines()
    assert "| Model | Noisy Box |" in lines
    assert "| sam | 48.8 / 42.1 / 39.5 |" in lines
    assert "| stable_sam | 82.3 / 74.1 / 82.3 |" in lines
    assert "| stable_sam | 0.600 |" in lines


mask_counts = jax.jit(device_metrics.mask_counts, static_argnums=2)
boundary_band = jax.jit(device_metrics.boundary_band, static_argnums=1)


def random_blobs(rng, count, shape):
    """Smooth random blobs: realistic boundaries, some touching the image border."""
    noise = rng.standard_normal((count, *shape))
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(noise, sigma=(0, 3, 3))
    return smooth > rng.uniform(0.0, 0.2, size=(count, 1, 1))


@pytest.mark.parametrize("shape", [(37, 53), (300, 200), (5, 400)])
def test_device_metrics_equal_the_metrics_module(shape):
    rng = np.random.default_rng(sum(shape))
    gt = random_blobs(rng, 1, shape)[0]
    masks = random_blobs(rng, 6, shape)
    masks[1] = False  # empty prediction
    masks[2] = True  # the whole image: its boundary is the image border
    masks[3] = gt
    # Two padded rows repeating the last real one, as the sharded decode produces.
    padded = np.concatenate([masks, masks[-1:], masks[-1:]])
    width = metrics.boundary_width(shape)
    counts = jax.device_get(mask_counts(jnp.asarray(padded), jnp.asarray(gt), width))
    got = evaluation.metrics_from_counts(counts, len(masks))
    expected = loop._image_metrics(evaluation.Prediction(masks, np.ones(len(masks))), gt)
    for key in ("miou", "mbiou", "msf"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    # And the pieces against `metrics` directly, mask by mask.
    for i, mask in enumerate(masks):
        band = metrics.mask_boundary(mask, width)
        np.testing.assert_array_equal(np.asarray(boundary_band(jnp.asarray(mask), width)), band)
        assert counts["inter"][i] == np.count_nonzero(mask & gt)


def test_device_metrics_of_an_empty_ground_truth_follow_metrics_conventions():
    gt = np.zeros((20, 30), bool)
    masks = np.zeros((2, 20, 30), bool)
    masks[1, 5:9, 5:9] = True
    counts = jax.device_get(mask_counts(jnp.asarray(masks), jnp.asarray(gt), 1))
    got = evaluation.metrics_from_counts(counts, 2)
    assert got["miou"] == pytest.approx(50.0)  # two empty masks agree (1), the other scores 0
    assert got["mbiou"] == pytest.approx(50.0)
    assert got["msf"] == pytest.approx(50.0)  # mean area 8 over a union of 16 pixels


def test_model_specs_route_to_the_right_builder(monkeypatch):
    from stablesam_jax import builder

    calls = []
    monkeypatch.setattr(builder, "build_sam", lambda *a, **k: calls.append(("sam", a, k)))
    monkeypatch.setattr(
        builder, "build_stable_sam", lambda *a, **k: calls.append(("stable_sam", a, k))
    )
    kinds = {"dt": "sam", "ss": "stable_sam"}
    monkeypatch.setattr(ckpt, "read_meta", lambda path: {"kind": kinds[path]})

    evaluation.ModelSpec("a", "vit_b", checkpoint="sam_dir").build()
    evaluation.ModelSpec(
        "b", "vit_b", kind="stable_sam", checkpoint="sam_dir", plugins="plug", dtype="bfloat16"
    ).build()
    evaluation.ModelSpec("c", "vit_b", merged="dt").build()
    evaluation.ModelSpec("d", "vit_b", kind="stable_sam", merged="ss").build()
    evaluation.ModelSpec("e", "vit_t", kind="stable_sam", random_init=True, seed=4).build()
    assert [(c[0], c[1]) for c in calls] == [
        ("sam", ("vit_b", "sam_dir")),
        ("stable_sam", ("vit_b", "sam_dir", "plug")),
        ("sam", ("vit_b", "dt")),
        ("stable_sam", ("vit_b", "ss")),
        ("stable_sam", ("vit_t", None, None)),
    ]
    assert calls[1][2]["dtype"] == jnp.bfloat16 and calls[0][2]["dtype"] is None
    assert calls[4][2]["seed"] == 4
    with pytest.raises(ValueError, match="Stable-SAM export; set kind='stable_sam'"):
        evaluation.ModelSpec("f", "vit_b", merged="ss").build()
