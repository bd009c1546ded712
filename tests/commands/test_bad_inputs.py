"""A catalogue of a user's mistakes on the argparse commands (predict, export, export_pretrained,
convert, demo, bench, amg, cache_bench): each must end in one message naming the problem, exit
status 2, no traceback, and no file written or changed.

Every case runs the command's `main(argv)` in-process on `cli_helpers.make_world`'s tiny inputs;
argv entries are formatted with `w` (the world) and `t` (the case's empty output folder).
"""

import importlib
from collections.abc import Callable
from typing import NamedTuple

import pytest
from cli_helpers import run_main, snapshot


class Case(NamedTuple):
    command: str  # module in stablesam_jax.commands
    name: str
    argv: Callable  # (world, tmp_path) -> argv
    phrase: str  # must appear in stderr
    setup: Callable | None = None  # (world, tmp_path) -> None, before the snapshot


def _predict(*extra, image=None, box="10,10,40,30", out="{t}/o.png"):
    def argv(w, t):
        given = [image.format(w=w.root, t=t) if image else w.image]
        given += ["--checkpoint", w.sam, "--out", out.format(w=w.root, t=t)]
        given += ["--box", box] if box else []
        return given + [e.format(w=w.root, t=t, sam=w.sam, plugins=w.plugins) for e in extra]

    return argv


def _args(*items):
    return lambda w, t: [
        i.format(w=w.root, t=t, sam=w.sam, plugins=w.plugins, export=w.export, data=w.data)
        for i in items
    ]


def _touch(name):
    def setup(w, t):
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        (t / name).write_text("x")

    return setup


def _mkdir(name):
    return lambda w, t: (t / name).mkdir(parents=True)


PREDICT = [
    Case("predict", "missing_image", _predict(image="{w}/nope.png"), "does not exist"),
    Case("predict", "corrupt_image", _predict(image="{w}/corrupt.jpg"), "not a readable image"),
    Case("predict", "image_1px_high", _predict(image="{w}/thin.png", box="1,0,5,1"), "at least 2"),
    Case("predict", "bomb_warning", _predict(image="{w}/bomb_warning.png"), "decompression"),
    Case("predict", "bomb_error", _predict(image="{w}/bomb_error.png"), "decompression bomb"),
    Case("predict", "out_is_input", _predict(out="{w}/image.png"), "would write over the input"),
    Case("predict", "out_is_input_spelled_differently", _predict(out="{w}/./image.png"), "input"),
    Case("predict", "out_missing_folder", _predict(out="{t}/no/o.png"), "does not exist; create"),
    Case("predict", "out_unknown_extension", _predict(out="{t}/o.xyz"), "cannot write images"),
    Case("predict", "out_no_extension", _predict(out="{t}/overlay"), "cannot write images"),
    Case(
        "predict", "out_is_a_folder", _predict(out="{t}/dir.png"), "is a folder", _mkdir("dir.png")
    ),
    Case("predict", "out_in_checkpoint", _predict(out="{w}/sam/o.png"), "would write over"),
    Case("predict", "mask_out_is_out", _predict("--mask-out", "{t}/o.png"), "both name"),
    Case("predict", "mask_out_is_input", _predict("--mask-out", "{w}/image.png"), "over the input"),
    Case("predict", "box_outside", _predict(box="10,10,300,30"), "outside the 64x48 (WxH) image"),
    Case("predict", "box_nan", _predict(box="10,10,nan,30"), "NaN or inf"),
    Case("predict", "box_flipped", _predict(box="40,10,10,30"), "x0 <= x1"),
    Case("predict", "box_three_numbers", _predict(box="1,2,3"), "--box must have 4 numbers"),
    Case("predict", "box_words", _predict(box="a,b,c,d"), "--box must be x0,y0,x1,y1 numbers"),
    Case("predict", "point_outside", _predict("--point", "10,500", box=None), "lies outside"),
    Case("predict", "point_label_5", _predict("--point", "10,10,5", box=None), "label must be 1"),
    Case("predict", "point_label_fraction", _predict("--point", "1,1,0.7"), "must be numbers"),
    Case("predict", "point_one_number", _predict("--point", "10", box=None), "x,y or x,y,label"),
    Case("predict", "no_prompt", _predict(box=None), "give a prompt"),
    Case("predict", "plugins_as_checkpoint", _predict("--checkpoint", "{plugins}"), "--plugins"),
    Case("predict", "pth_as_checkpoint", _predict("--checkpoint", "{w}/weights.pth"), "is a file"),
    Case("predict", "missing_checkpoint", _predict("--checkpoint", "{w}/nope"), "does not exist"),
    Case("predict", "unknown_model_type", _predict("--model-type", "vit_q"), "choose from"),
]

EXPORT = [
    Case(
        "export",
        "existing_export",
        _args("--model-type", "vit_t", "--out", "{export}", "--platforms", "cpu"),
        "already holds an export",
    ),
    Case(
        "export",
        "out_is_checkpoint",
        _args("--model-type", "vit_t", "--checkpoint", "{sam}", "--out", "{sam}"),
        "would write over the input",
    ),
    Case(
        "export",
        "out_is_a_file",
        _args("--model-type", "vit_t", "--out", "{w}/notes.txt"),
        "is a file, not a folder",
    ),
    Case(
        "export",
        "missing_checkpoint",
        _args("--model-type", "vit_t", "--checkpoint", "{w}/nope", "--out", "{t}/x"),
        "does not exist",
    ),
    Case(
        "export",
        "unknown_platform",
        _args("--model-type", "vit_t", "--out", "{t}/x", "--platforms", "cpu,tpx"),
        "--platforms",
    ),
    Case("export", "unknown_model_type", _args("--model-type", "vit_q", "--out", "{t}/x"), "vit_q"),
]

EXPORT_PRETRAINED = [
    Case(
        "export_pretrained",
        "missing_checkpoint",
        _args("--checkpoint", "{w}/nope", "--out", "{t}/w.npz"),
        "does not exist",
    ),
    Case(
        "export_pretrained",
        "plugins_checkpoint",
        _args("--checkpoint", "{plugins}", "--out", "{t}/w.npz"),
        "plain SAM weights",
    ),
    Case(
        "export_pretrained",
        "out_is_a_folder",
        _args("--checkpoint", "{sam}", "--out", "{t}"),
        "is a folder",
    ),
    Case(
        "export_pretrained",
        "out_missing_folder",
        _args("--checkpoint", "{sam}", "--out", "{t}/no/w.npz"),
        "does not exist; create",
    ),
    Case(
        "export_pretrained",
        "out_in_checkpoint",
        _args("--checkpoint", "{sam}", "--out", "{sam}/w.npz"),
        "would write over the input",
    ),
]

CONVERT = [
    Case(
        "convert",
        "output_exists",
        _args("--model-type", "vit_t", "--checkpoint", "{w}/weights.pth", "--output", "{sam}"),
        "pass --force",
    ),
    Case(
        "convert",
        "output_is_the_pth",
        _args(
            *("--model-type", "vit_t", "--checkpoint", "{w}/weights.pth"),
            *("--output", "{w}/weights.pth", "--force"),
        ),
        "would write over the input",
    ),
    Case(
        "convert",
        "output_is_a_file",
        _args(
            *("--model-type", "vit_t", "--checkpoint", "{w}/weights.pth"),
            *("--output", "{w}/notes.txt", "--force"),
        ),
        "is a file, not a folder",
    ),
    Case(
        "convert",
        "unknown_model_type",
        _args("--model-type", "vit_q", "--checkpoint", "{w}/weights.pth", "--output", "{t}/x"),
        "invalid choice",
    ),
]

DEMO = [
    Case("demo", "out_is_a_file", _args("--out", "{w}/notes.txt"), "is a file, not a folder"),
    Case(
        "demo",
        "missing_sam_weights",
        _args("--out", "{t}/d", "--sam-weights", "{w}/nope.npz"),
        "does not exist",
    ),
    Case(
        "demo",
        "sam_weights_not_npz",
        _args("--out", "{t}/d", "--sam-weights", "{w}/notes.txt"),
        "is not a packaged weight file",
    ),
    Case(
        "demo",
        "sam_weights_in_the_wiped_folder",
        _args("--out", "{t}/d", "--sam-weights", "{t}/d/work/sam.npz"),
        "which the demo empties first",
        _touch("d/work/sam.npz"),
    ),
    Case("demo", "occlusion_above_1", _args("--out", "{t}/d", "--occlusion-prob", "2"), "[0, 1]"),
    Case("demo", "learning_rate_nan", _args("--out", "{t}/d", "--learning-rate", "nan"), "in [0"),
    Case("demo", "batch_size_0", _args("--out", "{t}/d", "--batch-size", "0"), ">= 1"),
]

BENCH = [
    Case("bench", "unknown_part", _args("--parts", "gpu"), "--parts takes"),
    Case("bench", "prompt_count_0", _args("--prompts", "0"), "positive counts"),
    Case("bench", "image_size_syntax", _args("--image-size", "480"), "HxW"),
    Case("bench", "iters_0", _args("--iters", "0"), "--iters must be >= 1"),
]

AMG = [
    Case("amg", "points_per_side_0", _args("bench", "--points-per-side", "0"), ">= 1"),
    Case("amg", "image_size_1", _args("bench", "--image-size", "1"), "--image-size must be >= 2"),
    Case("amg", "iou_thresh_above_1", _args("bench", "--pred-iou-thresh", "2"), "<= 1"),
    Case("amg", "unknown_model_type", _args("bench", "--model-type", "vit_q"), "invalid choice"),
    Case(
        "amg",
        "missing_checkpoint",
        _args("compare", "--model-type", "vit_t", "--checkpoint", "{w}/nope"),
        "does not exist",
    ),
    Case(
        "amg",
        "cache_is_a_file",
        _args("bench", "--model-type", "vit_t", "--compilation-cache", "{w}/notes.txt"),
        "is a file",
    ),
]

CACHE_BENCH = [
    Case(
        "cache_bench",
        "cache_dir_not_empty",
        _args("--bench", "--cache-dir", "{t}/cache"),
        "is not empty",
        _touch("cache/entry"),
    ),
    Case(
        "cache_bench",
        "cache_dir_is_a_file",
        _args("--bench", "--cache-dir", "{w}/notes.txt"),
        "a file",
    ),
    Case("cache_bench", "points_per_side_0", _args("--bench", "--points-per-side", "0"), ">= 1"),
]

CASES = PREDICT + EXPORT + EXPORT_PRETRAINED + CONVERT + DEMO + BENCH + AMG + CACHE_BENCH


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}-{c.name}" for c in CASES])
def test_a_mistake_is_one_message_exit_2_and_nothing_written(case, world, tmp_path, capsys):
    main = importlib.import_module(f"stablesam_jax.commands.{case.command}").main
    if case.setup is not None:
        case.setup(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    status = run_main(main, case.argv(world, tmp_path))
    err = capsys.readouterr().err
    assert status == 2, err
    assert case.phrase in err, err
    assert "Traceback" not in err
    assert err.count("error:") == 1, err
    assert snapshot(world.root, tmp_path) == before
