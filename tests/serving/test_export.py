"""Exported encoder/decoder artifacts, the jax+numpy serving loader, saved embeddings, and the
persistent compilation cache."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from random_models import random_stable_sam

from stablesam_jax import SamPredictor
from stablesam_jax.commands.export import main
from stablesam_jax.serving import export as export_module
from stablesam_jax.serving import runtime as serving
from stablesam_jax.serving.export import export_model

PROMPTS = dict(
    point_coords=np.array(
        [[[40.0, 30.0], [100.0, 90.0]], [[150.0, 20.0], [0.0, 0.0]], [[75.5, 60.0], [10.0, 110.0]]]
    ),
    point_labels=np.array([[1, 0], [1, -2], [1, 1]]),  # -2: an empty slot in prompt 1
    boxes=np.array([[10.0, 5.0, 120.0, 100.0], [60.0, 10.0, 190.0, 80.0], [5.0, 5.0, 60.0, 60.0]]),
)


@pytest.fixture(scope="module")
def model():
    """vit_t Stable-SAM with every weight random, plugins included (moved offsets), so the
    export must carry them all."""
    return random_stable_sam(3, sam_like=True)


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export_model(model, str(out), platforms=("cpu",))
    return out


def _library_outputs(model, image):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    # The predictor has no empty point slots, so each prompt goes in alone, without its slots.
    out = {"features": np.asarray(predictor.features)}
    for i in range(3):
        keep = PROMPTS["point_labels"][i] != -2
        masks, iou, low = predictor.predict(
            PROMPTS["point_coords"][i][keep],
            PROMPTS["point_labels"][i][keep],
            box=PROMPTS["boxes"][i],
            return_logits=True,
        )
        out[f"logits_{i}"], out[f"iou_{i}"], out[f"low_{i}"] = masks, iou, low
    return out


SERVE_SCRIPT = textwrap.dedent(
    """
    import sys, json
    import numpy as np
    from stablesam_jax.serving import runtime as serving
    export_dir, image_path, out_path = sys.argv[1:4]
    sam = serving.ExportedSam(export_dir)
    image = np.load(image_path)
    embedding = sam.encode(image)
    serving.save_embedding(out_path + ".emb.npz", embedding)
    embedding = serving.load_embedding(out_path + ".emb.npz", expect_model_type="vit_t")
    prompts = json.loads(sys.argv[4])
    logits, iou, low = sam.decode(
        embedding,
        np.array(prompts["point_coords"]), np.array(prompts["point_labels"]),
        np.array(prompts["boxes"]), return_logits=True,
    )
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "torch", "optax", "orbax")
                   or m.startswith("stablesam_jax.modeling"))
    np.savez(out_path, features=embedding.features, logits=logits, iou=iou, low=low)
    print(json.dumps({"heavy_modules": heavy, "traces": dict(serving.TRACE_COUNTS)}))
    """
)


def test_artifacts_in_a_fresh_process_match_the_library(model, image, export_dir, tmp_path):
    manifest = json.loads((export_dir / serving.MANIFEST_FILE).read_text())
    assert manifest["stable_sam"] and manifest["model_type"] == "vit_t"
    np.save(tmp_path / "image.npy", image)
    prompts = {k: v.tolist() for k, v in PROMPTS.items()}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_SCRIPT,
            str(export_dir),
            str(tmp_path / "image.npy"),
            str(tmp_path / "out.npz"),
            json.dumps(prompts),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy_modules"] == []  # jax + numpy only
    served = np.load(tmp_path / "out.npz")
    ref = _library_outputs(model, image)
    np.testing.assert_allclose(
        served["features"], ref["features"], rtol=0, atol=1e-5 * np.abs(ref["features"]).max()
    )
    for i in range(3):
        scale = np.abs(ref[f"low_{i}"]).max()
        np.testing.assert_allclose(served["low"][i], ref[f"low_{i}"], atol=1e-4 * scale)
        np.testing.assert_allclose(served["iou"][i], ref[f"iou_{i}"], atol=1e-4)
        np.testing.assert_allclose(served["logits"][i], ref[f"logits_{i}"], atol=1e-4 * scale)


def test_prompt_counts_in_a_bucket_compile_once(export_dir):
    sam = serving.ExportedSam(
        export_dir, load_encoder=False, prompt_buckets=(4,), point_buckets=(2,)
    )
    rng = np.random.default_rng(0)
    embedding = serving.Embedding(
        rng.standard_normal((16, 16, 256)).astype(np.float32),
        (100, 90),
        (256, 230),
        "vit_t",
        sam.encoder_id,
    )
    sam.decode(embedding, boxes=np.array([[0, 0, 50, 50]]))  # compiles the (4, 2) bucket
    before = dict(serving.TRACE_COUNTS)
    for n in (1, 2, 3, 4):
        for p in (1, 2):
            coords = rng.random((n, p, 2)) * 80
            sam.decode(
                embedding,
                coords,
                np.ones((n, p), np.int32),
                boxes=np.tile(coords[:, 0], 2),  # [x, y, x, y]: a valid box of each first point
            )
    assert dict(serving.TRACE_COUNTS) == before
    # The counters do count: an image in the next size bucket (130 rows -> 192) re-traces postprocessing.
    bigger = serving.Embedding(embedding.features, (130, 90), (256, 177), "vit_t", sam.encoder_id)
    sam.decode(bigger, boxes=np.array([[0, 0, 50, 50]]))
    assert serving.TRACE_COUNTS["postprocess"] == before["postprocess"] + 1


def test_saved_embedding_feeds_the_predictor(model, image, tmp_path):
    predictor = SamPredictor(model)
    [embedding] = predictor.encode_images([image])
    path = serving.save_embedding(tmp_path / "emb", embedding, model_type="vit_t")
    predictor.set_embedding(serving.load_embedding(path))
    got = predictor.predict(np.array([[50.0, 40.0]]), np.array([1]), return_logits=True)
    predictor.set_image(image)
    ref = predictor.predict(np.array([[50.0, 40.0]]), np.array([1]), return_logits=True)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
    # A flipped byte is caught by the checksum.
    data = dict(np.load(path))
    data["features"] = data["features"].copy()
    data["features"][0, 0, 0] += 1.0
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(serving.ServingError, match="checksum"):
        serving.load_embedding(tmp_path / "bad.npz")
    with pytest.raises(serving.ServingError, match="vit_h"):
        serving.load_embedding(path, expect_model_type="vit_h")


def test_loader_errors(export_dir, tmp_path):
    with pytest.raises(serving.ServingError, match="no manifest.json"):
        serving.ExportedSam(tmp_path)
    sam = serving.ExportedSam(export_dir, load_encoder=False)
    foreign = serving.Embedding(
        np.zeros((16, 16, 256), np.float32), (10, 10), (256, 256), "vit_t", "0123"
    )
    with pytest.raises(serving.ServingError, match="re-encode"):
        sam.decode(foreign, boxes=np.array([[0, 0, 5, 5]]))
    with pytest.raises(serving.ServingError, match="load_encoder=False"):
        sam.encode(np.zeros((8, 8, 3), np.uint8))


def test_cli_writes_random_weights_with_a_warning(model, tmp_path, monkeypatch, capsys):
    # Building a model op by op costs half a minute on CPU; the CLI's plumbing is under test.
    monkeypatch.setattr(export_module, "build_for_export", lambda *args, **kwargs: model)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        assert main(["--model-type", "vit_t", "--out", str(tmp_path), "--platforms", "cpu"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["random_weights"] and manifest["dtype"] == "float32"
    for name in (
        "encoder.jaxexport",
        "decoder.jaxexport",
        "encoder_weights.npz",
        "decoder_weights.npz",
    ):
        assert (tmp_path / name).stat().st_size > 0
    exported = jax.export.deserialize(bytearray((tmp_path / "decoder.jaxexport").read_bytes()))
    assert str(exported.in_avals[-1].shape) == "(n,)"  # prompt count is symbolic
    assert main(["--model-type", "vit_t", "--out", str(tmp_path), "--platforms", "cpu"]) == 2
    assert "--force" in capsys.readouterr().err


def test_persistent_cache_stores_small_cpu_programs(tmp_path):
    code = textwrap.dedent(
        f"""
        from stablesam_jax.utils.compilation_cache import enable_compilation_cache
        enable_compilation_cache({str(tmp_path)!r})
        import jax, jax.numpy as jnp
        jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert sum(len(files) for _, _, files in os.walk(tmp_path)) >= 1  # a ~ms compile was cached


def test_decoder_weights_are_named_and_carry_the_plugins(export_dir):
    with np.load(export_dir / serving.DECODER_WEIGHTS_FILE) as data:
        names = set(data.files)
    assert {n.split(".")[0] for n in names} == {"prompt_encoder", "mask_decoder"}
    assert any(".dsp." in n for n in names) and any(".drp." in n for n in names)


def test_runtime_imports_no_flax():
    code = textwrap.dedent(
        """
        import sys
        import stablesam_jax.serving.runtime
        import stablesam_jax.serving
        assert "flax" not in sys.modules, sorted(m for m in sys.modules if "flax" in m)
        assert "stablesam_jax.serving.export" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serving_package_exports_the_runtime_and_the_exporter():
    import stablesam_jax.serving as package

    assert package.ExportedSam is serving.ExportedSam
    assert package.load_embedding is serving.load_embedding
    assert package.export_model is export_model
