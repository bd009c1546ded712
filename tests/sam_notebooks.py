"""The official notebooks' API calls, written once for any package with `segment_anything`'s
API: `predictor_example.ipynb` and `automatic_mask_generator_example.ipynb`, their code cells'
calls in order with their arguments (pixel coordinates scaled to small images), each cell a
function of a namespace dict. Also the small SAM both packages load (saved with `torch.save`) and
its entries in both registries. Used by `test_segment_anything_compat.py`; needs torch."""

import functools
import importlib

import numpy as np
import torch
import torchvision_stub  # noqa: F401 - the official package imports torchvision

from stablesam_jax import builder
from stablesam_jax.convert import to_torch_state_dict
from stablesam_jax.modeling import SAM_VARIANTS, SamConfig
from stablesam_jax.tools.official import build_official_sam, randomize_

MODEL_TYPE = "vit_nano"
CONFIG = SamConfig(32, 2, 2, (1,), img_size=128, prompt_embed_dim=64, decoder_mlp_dim=256,
                   iou_head_hidden_dim=64)  # fmt: skip
PACKAGES = ("segment_anything", "stablesam_jax")
S1, S2 = 0.1, 0.2  # truck.jpg (1800 x 1200) -> 180 x 120; groceries.jpg (640 x 480) -> 128 x 96
TOL, PIXEL_AGREEMENT = 1e-4, 0.999


def save_checkpoint(path) -> None:
    torch_sam = build_official_sam(CONFIG)
    randomize_(torch_sam, seed=0)
    with torch.no_grad():
        decoder = torch_sam.mask_decoder
        for i in (0, 3):  # equal transposed-conv taps: no checkerboard over every mask
            w = decoder.output_upscaling[i].weight
            w.copy_(w[:, :, :1, :1].expand_as(w).clone())
        decoder.iou_prediction_head.layers[-1].bias.fill_(0.9)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(1e4)
            mlp.layers[-1].bias.mul_(1e4)
    torch.save(torch_sam.state_dict(), path)


def official_builder(checkpoint):
    """The official `_build_sam` for CONFIG."""
    sam = build_official_sam(CONFIG)
    with open(checkpoint, "rb") as f:
        sam.load_state_dict(torch.load(f))
    return sam


def register(monkeypatch) -> None:
    official = importlib.import_module("segment_anything")
    monkeypatch.setitem(official.sam_model_registry, MODEL_TYPE, official_builder)
    monkeypatch.setitem(SAM_VARIANTS, MODEL_TYPE, CONFIG)
    registry = builder.sam_model_registry
    monkeypatch.setitem(registry, MODEL_TYPE, functools.partial(builder.build_sam, MODEL_TYPE))


def weights(sam) -> dict:
    if isinstance(sam, torch.nn.Module):
        skip = ("pixel_mean", "pixel_std")
        return {k: v.numpy() for k, v in sam.state_dict().items() if not k.endswith(skip)}
    return to_torch_state_dict(sam)


# --------------------------------------------------------------------- the notebooks' calls


def _predict(ns, **kwargs):
    masks, scores, logits = ns["predictor"].predict(**kwargs)
    return {"masks": masks, "scores": scores, "logits": logits}


def predictor_cells(pkg, checkpoint, image, device):
    """predictor_example.ipynb up to the batched prompts: (name, cell) pairs; each cell reads and
    writes the namespace `ns`."""
    sa = importlib.import_module(pkg)  # from segment_anything import sam_model_registry, ...

    def load(ns):
        ns["sam"] = sa.sam_model_registry[MODEL_TYPE](checkpoint=checkpoint)
        return weights(ns["sam"])

    def to_device(ns):
        ns["sam"].to(device=device)
        return {"device": str(ns["sam"].device)}

    def set_image(ns):
        ns["predictor"] = sa.SamPredictor(ns["sam"])
        ns["predictor"].set_image(image)
        return {"embedding": ns["predictor"].get_image_embedding()}

    def one_point(ns):
        out = _predict(
            ns,
            point_coords=np.array([[500, 375]]) * S1,
            point_labels=np.array([1]),
            multimask_output=True,
        )
        ns["scores"], ns["logits"] = out["scores"], out["logits"]
        return out

    def points_and_mask(labels):
        def cell(ns):
            mask_input = ns["logits"][np.argmax(ns["scores"]), :, :]
            return _predict(
                ns,
                point_coords=np.array([[500, 375], [1125, 625]]) * S1,
                point_labels=np.array(labels),
                mask_input=mask_input[None, :, :],
                multimask_output=False,
            )

        return cell

    input_box = np.array([425, 600, 700, 875]) * S1
    return [
        ("sam_model_registry[...](checkpoint=.pth)", load),
        ("sam.to(device=device); sam.device", to_device),
        ("SamPredictor(sam).set_image(image)", set_image),
        ("predict: one point, multimask", one_point),
        ("predict: two points + mask_input", points_and_mask([1, 1])),
        ("predict: point, background point + mask_input", points_and_mask([1, 0])),
        (
            "predict: box",
            lambda ns: _predict(
                ns,
                point_coords=None,
                point_labels=None,
                box=input_box[None, :],
                multimask_output=False,
            ),
        ),
        (
            "predict: box + background point",
            lambda ns: _predict(
                ns,
                point_coords=np.array([[575, 750]]) * S1,
                point_labels=np.array([0]),
                box=input_box,
                multimask_output=False,
            ),
        ),
    ]


BOXES1 = [[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800],
          [1240, 675, 1400, 750]]  # fmt: skip
BOXES2 = [[450, 170, 520, 350], [350, 190, 450, 350], [500, 170, 580, 350],
          [580, 170, 640, 350]]  # fmt: skip


def batched_cells(pkg, image, image2):
    """predictor_example.ipynb's batched prompts: predict_torch, then `sam(batched_input)`."""
    transforms = importlib.import_module(f"{pkg}.utils.transforms")

    def transform_boxes(ns):
        predictor = ns["predictor"]
        input_boxes = torch.tensor(BOXES1, device=predictor.device) * S1
        ns["boxes"] = predictor.transform.apply_boxes_torch(input_boxes, image.shape[:2])
        return {"transformed_boxes": ns["boxes"].cpu().numpy()}

    def predict_torch(ns):
        masks, scores, logits = ns["predictor"].predict_torch(
            point_coords=None, point_labels=None, boxes=ns["boxes"], multimask_output=False
        )
        assert masks.shape == (4, 1, *image.shape[:2])  # (batch) x (masks per input) x H x W
        return {"masks": masks.cpu().numpy(), "scores": scores.numpy(), "logits": logits.numpy()}

    def batched_input(ns):
        sam = ns["sam"]
        resize_transform = transforms.ResizeLongestSide(sam.image_encoder.img_size)

        def prepare_image(image, transform, device):
            image = transform.apply_image(image)
            image = torch.as_tensor(image, device=device.device)
            return image.permute(2, 0, 1).contiguous()

        ns["batched_input"] = [
            {
                "image": prepare_image(im, resize_transform, sam),
                "boxes": resize_transform.apply_boxes_torch(
                    torch.tensor(b, device=sam.device) * s, im.shape[:2]
                ),
                "original_size": im.shape[:2],
            }
            for im, b, s in ((image, BOXES1, S1), (image2, BOXES2, S2))
        ]
        records = enumerate(ns["batched_input"])
        return {f"{k}{i}": r[k].numpy() for i, r in records for k in ("image", "boxes")}

    def sam_forward(ns):
        batched_output = ns["sam"](ns["batched_input"], multimask_output=False)
        assert set(batched_output[0].keys()) == {"masks", "iou_predictions", "low_res_logits"}
        outputs = enumerate(batched_output)
        return {f"{k}{i}": out[k].cpu().numpy() for i, out in outputs for k in out}

    return [
        ("predictor.device; transform.apply_boxes_torch", transform_boxes),
        ("predict_torch: four boxes", predict_torch),
        ("ResizeLongestSide(...).apply_image / apply_boxes_torch; sam.device", batched_input),
        ("sam(batched_input, multimask_output=False)", sam_forward),
    ]


def generator_cells(pkg, checkpoint, image, device):
    """automatic_mask_generator_example.ipynb."""
    sa = importlib.import_module(pkg)  # from segment_anything import SamAutomaticMaskGenerator, ...

    def load(ns):
        ns["sam"] = sa.sam_model_registry[MODEL_TYPE](checkpoint=checkpoint)
        ns["sam"].to(device=device)
        ns["mask_generator"] = sa.SamAutomaticMaskGenerator(ns["sam"])
        return weights(ns["sam"])

    def generate(ns):
        masks = ns["mask_generator"].generate(image)
        return {"records": masks}

    def generate_tuned(ns):
        mask_generator_2 = sa.SamAutomaticMaskGenerator(
            model=ns["sam"],
            points_per_side=32,
            pred_iou_thresh=0.86,
            stability_score_thresh=0.92,
            crop_n_layers=1,
            crop_n_points_downscale_factor=2,
            min_mask_region_area=100,  # Requires open-cv to run post-processing
        )
        return {"records": mask_generator_2.generate(image)}

    return [
        ("amg: registry + sam.to + SamAutomaticMaskGenerator(sam)", load),
        ("amg: generate(image), defaults", generate),
        ("amg: generate(image), tuned settings", generate_tuned),
    ]
