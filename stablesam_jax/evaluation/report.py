"""The report as Markdown tables shaped like the paper's Table 2 (and Table 3 for COCO), and as
JSON-safe values for results.json."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .protocol import METRIC_KEYS, POOLED, PROMPT_TYPE_TITLES


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"


def _images(count) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def _model_table(per_model: Mapping[str, Mapping[str, Mapping]], prompt_types) -> list[str]:
    header = ["Model"] + [PROMPT_TYPE_TITLES.get(t, t) for t in prompt_types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_type in per_model.items():
        cells = [model]
        for t in prompt_types:
            m = by_type.get(t, {})
            cells.append(" / ".join(_fmt(m.get(k)) for k in METRIC_KEYS))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _drp_table(per_model, prompt_types) -> list[str]:
    rows = {
        model: by_type
        for model, by_type in per_model.items()
        if any("drp_a1" in by_type.get(t, {}) for t in prompt_types)
    }
    if not rows:
        return []
    header = ["Model"] + [PROMPT_TYPE_TITLES.get(t, t) for t in prompt_types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_type in rows.items():
        cells = [model] + [_routing_cell(by_type.get(t, {})) for t in prompt_types]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _routing_cell(values: dict) -> str:
    """ "a1 / a2" (a2 where known), "-" without a DRP."""
    if "drp_a1" not in values:
        return "-"
    a2 = values.get("drp_a2")
    return f"{values['drp_a1']:.3f}" + ("" if a2 is None else f" / {a2:.3f}")


def _number(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


DIAGNOSTICS_LEGEND = (
    "Each cell: attention on target at the sampled positions / routed (DRP's a1 : a2 mix of "
    "sampled and own-cell features) / uniform-attention baseline (target area) / shared "
    "fraction of the attention's values (1: the same value everywhere) ; mean |offset| "
    "(cells) / offset spatial std (cells) / shared-field fraction / mean DRP a1; '-' where the "
    'model has none (docs/design.md, "Diagnostics").'
)
_ATTENTION_PARTS = (
    ("attn_target", 3),
    ("attn_target_routed", 3),
    ("target_area", 3),
    ("value_shared", 3),
)
_OFFSET_PARTS = (("offset_abs", 2), ("offset_std", 2), ("shared_fraction", 3))


def _diagnostics_table(diagnosed: Mapping, results: Mapping, prompt_types) -> list[str]:
    """One row per model with diagnostics: the key numbers of each prompt type."""
    header = ["Model"] + [PROMPT_TYPE_TITLES.get(t, t) for t in prompt_types]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_type in diagnosed.items():
        cells = [model]
        for t in prompt_types:
            d, a1 = by_type.get(t, {}), results.get(model, {}).get(t, {}).get("drp_a1")
            attention = [_number(d.get(key), digits) for key, digits in _ATTENTION_PARTS]
            offsets = [_number(d.get(key), digits) for key, digits in _OFFSET_PARTS]
            cells.append(" / ".join(attention) + " ; " + " / ".join(offsets + [_number(a1, 3)]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _prompt_types_of(per_model: Mapping) -> list[str]:
    seen: list[str] = []
    for by_type in per_model.values():
        for t in by_type:
            if t not in seen:
                seen.append(t)
    return seen


def _pooled_mapping_table(results: Mapping) -> list[str]:
    types = _prompt_types_of(results)
    lines = ["Each cell: mIoU / mBIoU / mSF (0-100).", ""]
    lines += _model_table(results, types)
    drp = _drp_table(results, types)
    if drp:
        lines += ["", "Mean DRP routing weights a1 / a2 (deformable / regular features):", ""] + drp
    return lines


def _dataset_sections(results: Mapping) -> list[str]:
    by_dataset = results["results"]
    info = results.get("datasets", {})
    protocol = results.get("protocol", {})
    types = protocol.get("prompt_types") or _prompt_types_of(by_dataset.get(POOLED, {}))
    lines = [
        "# Stable-SAM evaluation",
        "",
        f"{protocol.get('num_prompts', '?')} prompts per image and prompt type, seed "
        f"{protocol.get('seed', '?')}, single-mask output. Each cell: mIoU / mBIoU / mSF (0-100).",
    ]
    for name, per_model in by_dataset.items():
        if name == POOLED:
            continue
        count = info.get(name, {}).get("num_images", "?")
        lines += ["", f"## {name} ({_images(count)})", ""] + _model_table(per_model, types)
    if POOLED in by_dataset:
        datasets = [n for n in by_dataset if n != POOLED]
        count = sum(info.get(n, {}).get("num_images", 0) for n in datasets)
        lines += [
            "",
            f"## Pooled: {', '.join(datasets)} ({_images(count)})",
            "",
        ] + _model_table(by_dataset[POOLED], types)
        drp = _drp_table(by_dataset[POOLED], types)
        if drp:
            lines += ["", "## Mean DRP routing weights a1 / a2 (pooled)", ""] + drp
    diagnosed = results.get("diagnostics", {}).get(POOLED)
    if diagnosed:
        lines += ["", "## Diagnostics of the DSP block (pooled)", "", DIAGNOSTICS_LEGEND, ""]
        lines += _diagnostics_table(diagnosed, by_dataset.get(POOLED, {}), types)
    return lines


def _coco_section(set_name: str, per_model: Mapping) -> list[str]:
    bins = _prompt_types_of(per_model)
    header = ["Model"] + [f"N-Box ({b}) {k}" for b in bins for k in ("mAP", "mAP50")]
    lines = ["", f"## {set_name}: noisy-box mask AP (COCOeval segm)", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, by_bin in per_model.items():
        cells = [model]
        for b in bins:
            cells += [_fmt(by_bin[b]["segm_mAP"]), _fmt(by_bin[b]["segm_mAP50"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_table(results: Mapping) -> str:
    """Markdown in the shape of the paper's Table 2 (cells: mIoU / mBIoU / mSF, 0-100).

    `results` is a full report (`evaluate_report` / results.json: one table per dataset, then
    pooled, then mean DRP weights a1 and COCO mAP when present) or the pooled mapping `evaluate`
    returns (one table)."""
    if "results" not in results:
        return "\n".join(_pooled_mapping_table(results)) + "\n"
    lines = _dataset_sections(results)
    for set_name, per_model in results.get("coco", {}).items():
        lines += _coco_section(set_name, per_model)
    return "\n".join(lines) + "\n"


def jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
