"""The device check's results (`tools.device_check.run`) as the README's GPU table (Markdown)."""

from __future__ import annotations

GIB = 2**30


def _gib(value) -> str:
    return "-" if value is None else f"{value / GIB:.1f} GiB"


def _program_bytes(record: dict) -> int | None:
    parts = [record.get(f"program_{k}_bytes") for k in ("argument", "output", "temp")]
    return None if any(p is None for p in parts) else sum(parts)


def _find(records: list[dict], **match) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _encoder_rows(records: list[dict]) -> list[str]:
    rows = []
    for jax_record in _find(records, bench="encoder", impl="jax"):
        model = jax_record["model_type"]
        share = jax_record.get("share_of_peak")
        ours = (
            f"{jax_record['images_per_s']:g} images/s ({jax_record['ms_per_batch']:g} ms/batch, "
            f"{jax_record['achieved_tflops']:g} TFLOP/s"
            + ("" if share is None else f", {100 * share:.1f}% of peak")
            + f"); compile {jax_record['compile_s']:g} s; "
            f"program {_gib(_program_bytes(jax_record))}"
        )
        torch_records = _find(records, bench="encoder", impl="torch", model_type=model)
        theirs = speedup = "-"
        if torch_records:
            t = torch_records[0]
            theirs = f"{t['images_per_s']:g} images/s; peak {_gib(t.get('peak_memory_bytes'))}"
            speedup = f"{t['jax_speedup']:g}x"
        what = f"{model} encoder, {jax_record['dtype']}, batch {jax_record['batch']}"
        rows.append(f"| {what} | {ours} | {theirs} | {speedup} |")
    return rows


def _decoder_rows(records: list[dict]) -> list[str]:
    sam = {r["prompts"]: r for r in _find(records, bench="decoder", impl="jax", plugins=False)}
    stable = {r["prompts"]: r for r in _find(records, bench="decoder", impl="jax", plugins=True)}
    torch = {r["prompts"]: r for r in _find(records, bench="decoder", impl="torch")}
    counts = sorted(sam)
    if not counts:
        return []
    joined = " / ".join(str(n) for n in counts)

    def times(table, n):
        return f"{table[n]['ms_median']:g}" if n in table else "-"

    def compile_s(table):
        return max((r["compile_s"] for r in table.values()), default=0)

    model = sam[counts[0]]["model_type"]
    rows = [
        f"| decoder ({model}), {joined} box prompts, SAM | "
        + " / ".join(times(sam, n) for n in counts)
        + f" ms; compile <= {compile_s(sam):g} s | "
        + (" / ".join(times(torch, n) for n in counts) + " ms" if torch else "-")
        + " | "
        + (
            " / ".join(f"{torch[n]['jax_speedup']:g}x" if n in torch else "-" for n in counts)
            if torch
            else "-"
        )
        + " |"
    ]
    if stable:
        overhead = " / ".join(
            f"{100 * (stable[n]['ms_median'] / sam[n]['ms_median'] - 1):+.0f}%"
            if n in stable
            else "-"
            for n in counts
        )
        rows.append(
            f"| decoder ({model}), {joined} box prompts, Stable-SAM | "
            + " / ".join(times(stable, n) for n in counts)
            + f" ms ({overhead} vs SAM); compile <= {compile_s(stable):g} s | - | - |"
        )
    return rows


def _train_rows(records: list[dict]) -> list[str]:
    rows = []
    for r in _find(records, bench="train_step"):
        devices = r["global_batch"] // max(r["per_device_batch"], 1)
        what = (
            f"train step, {r['model_type']}, `{r['trainable']}`, {r['dtype']}, batch "
            f"{r['per_device_batch']} per device x {devices}"
        )
        ours = (
            f"{r['images_per_s']:g} images/s ({r['ms_median']:g} ms/step); compile "
            f"{r['compile_s']:g} s; program {_gib(_program_bytes(r))}; loss {r['loss']:.3f}"
        )
        rows.append(f"| {what} | {ours} | - | - |")
    return rows


def _check_rows(records: list[dict]) -> list[str]:
    rows = []
    for r in _find(records, bench="fast_check"):
        h, w = r["image_hw"]
        what = (
            f"fast path (bf16, fast attention, scanned) vs fp32 reference, {r['model_type']}, "
            f"{h}x{w} image, {r['prompts']['boxes']} boxes + {r['prompts']['clicks']} clicks"
        )
        ours = (
            f"embeddings {r['embedding_max_rel_diff']:.2g}, logits {r['logits_max_rel_diff']:.2g} "
            f"(max diff / max); IoU max diff {r['iou_max_abs_diff']:.2g}; masks agree on "
            f"{100 * r['mask_pixel_agreement']:.2f}% of pixels (min mask IoU "
            f"{r['mask_iou_min']:.3f}); set_image {r['reference_set_image_ms']:g} -> "
            f"{r['fast_set_image_ms']:g} ms"
        )
        rows.append(f"| {what} | {ours} | - | - |")
    return rows


def markdown_table(results: dict) -> str:
    """The GPU table, then what was skipped or failed."""
    env = results["environment"]
    records = results["records"]
    plan = results["plan"]
    title = "Device check (dry run: tiny sizes, not a measurement)" if results["dry_run"] else ""
    lines = [
        f"### {title or 'GPU table'}: {env['device']} x {env['device_count']} "
        f"({env['platform']}), JAX {env['jax']}, torch {results['torch'] or '-'}, {env['date']}",
        "",
        f"`{env['command']}`: random weights; medians of {plan['iters']} calls after "
        f"{plan['warmup']} warm-up calls; program = XLA's plan for the compiled program "
        "(arguments + outputs + temporaries).",
        "",
        "| what | stablesam-jax | official PyTorch | JAX speedup |",
        "|---|---|---|---|",
        *_check_rows(records),
        *_encoder_rows(records),
        *_decoder_rows(records),
        *_train_rows(records),
        "",
        f"Allocator peak over the run: {_gib(results.get('peak_memory_bytes'))}; "
        f"{results.get('elapsed_s', 0):g} s in all.",
    ]
    if results.get("torch_skipped"):
        lines.append(f"Official PyTorch SAM: skipped ({results['torch_skipped']}).")
    for r in _find(records, bench="torch"):
        lines.append(f"Official PyTorch SAM: skipped ({r['skipped']}).")
    for stage in results["stages"]:
        if stage["status"] != "ok":
            why = stage.get("error") or stage.get("reason")
            lines.append(f"Stage `{stage['stage']}`: {stage['status']} ({why}).")
    return "\n".join(lines) + "\n"
