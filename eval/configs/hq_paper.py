"""Paper Table 2: SAM, Stable-SAM, DT-SAM and PT-SAM on the four HQ datasets (ViT-L base), and
HQ-SAM (ViT-L) next to them.

Command:
    python -m stablesam_jax.eval --config eval/configs/hq_paper.py \
        --config.data_root=/data/hq \
        --config.models.sam.checkpoint=ckpt/sam_vit_l \
        --config.models.stable_sam.checkpoint=ckpt/sam_vit_l \
        --config.models.stable_sam.plugins=runs/ssam_l/export/plugins
  and for the finetuned baselines (full SAM checkpoints exported by their training runs):
        --config.models.dt_sam.enabled=True \
        --config.models.dt_sam.checkpoint=runs/dt_sam_l/export/sam \
        --config.models.pt_sam.enabled=True \
        --config.models.pt_sam.checkpoint=runs/pt_sam_l/export/sam
  and for HQ-SAM (the official sam_hq_vit_l.pth converted into `hq_vit_l`, or the export of
  train/configs/hq_sam_vit_l.py; evaluated with HQ-SAM's default output, SAM's mask plus the HQ
  mask; add `--config.models.hq_sam.hq_token_only=True` to score the HQ mask alone, as HQ-SAM's
  own evaluation does):
        --config.models.hq_sam.enabled=True \
        --config.models.hq_sam.checkpoint=ckpt/sam_hq_vit_l

`data_root` holds HQ-SAM's release (DIS5K/DIS-VD/{im,gt}, thin_object_detection/{ThinObject5K,
COIFT,HRSOD}). SAM weights come from convert/torch_to_flax.py; plugins and the baselines from the
training configs train/configs/{stable_sam,dt_sam,pt_sam}_vit_l.py (a merged Stable-SAM export
goes in `merged` with kind "stable_sam"). Useful overrides: `--config.max_images=20` (a quick
look), `--config.datasets["HR-SOD"].enabled=False`, `--config.models.sam.dtype=bfloat16`,
`--config.image_batch_size=8`, every prompt type:
`--config.prompt_types="('gt_box','noisy_box','noisy_box_50_60','noisy_box_60_70','one_point',
'three_points','five_points','ten_points')"`.

Expected result (pooled over the four sets, 1,650 images; paper Table 2;
cells mIoU / mBIoU / mSF):
    | Model      | GT Box      | Noisy Box          | 1 Point            | 3 Points           |
    | sam        | 79.5 / 71.1 | 48.8 / 42.1 / 39.5 | 43.3 / 37.4 / 45.1 | 78.7 / 69.5 / 79.3 |
    | stable_sam |             | 82.3 / 74.1 / 82.3 | 76.9 / 68.4 / 71.1 | 84.0 / 75.8 / 84.9 |
(the paper gives no mSF for the GT box and no Stable-SAM GT-box row). DT-SAM and PT-SAM land
between SAM and Stable-SAM on noisy boxes. Stable-SAM's mean DRP weight a1 is higher for worse
prompts (paper: 0.469 with 3 points, 0.614 with 1 point). HQ-SAM (12 epochs) is below Stable-SAM on
noisy boxes (paper: mIoU 72.4 vs 82.3). The job writes results.json and
results.md to output_dir. Not run here: no weights or data can be downloaded on the machines this
project is built on.
"""

from stablesam_jax import evaluation

HQ_DATASETS = ("DIS5K-VD", "ThinObject5K-TE", "COIFT", "HR-SOD")


def get_config():
    config = evaluation.base_config("eval_out/hq_paper")
    config.models.sam = evaluation.model_config("vit_l", "sam")
    config.models.stable_sam = evaluation.model_config("vit_l", "stable_sam")
    config.models.dt_sam = evaluation.model_config("vit_l", "sam", enabled=False)
    config.models.pt_sam = evaluation.model_config("vit_l", "sam", enabled=False)
    config.models.hq_sam = evaluation.model_config("hq_vit_l", "sam", enabled=False)
    for name in HQ_DATASETS:
        config.datasets[name] = evaluation.layout_dataset_config(name)
    config.image_batch_size = 4
    return config
