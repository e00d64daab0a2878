"""What an export measured, as labelled rows: one source for ``verification.md`` and the export
section of ``autocompress report``. Works on ``ExportResult.to_dict()`` (the
``verification.json`` record); exports recorded before a field existed show it as ``–``."""

from __future__ import annotations

from typing import Any

from ..policy import CompressionPolicy


def fmt(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec``, or ``–`` when it is missing."""
    return "–" if v is None else format(v, spec)


def deployed_form(e: dict) -> str:
    """``INT8 QDQ, -127..127`` / ``FP32 (why INT8 was not deployed)``."""
    if e.get("deployed_form") != "int8-qdq":
        return f"FP32 ({e['int8_fallback']})" if e.get("int8_fallback") else "FP32"
    rng = "weights on -64..64 (U8S8 saturation workaround)" if e.get("int8_reduce_range") else ""
    nbits = f"; {e['nbits_note']}" if e.get("nbits_note") else ""
    return f"INT8 QDQ, {rng or '-127..127'}{nbits}"


def export_rows(e: dict) -> list[tuple[str, str]]:
    """(label, value) of every headline number of an export."""
    drop = (e["baseline_test_accuracy"] - e["test_accuracy"]) * 100
    tput = ", ".join(f"b{b}: {v:.0f}/s" for b, v in (e.get("throughput") or {}).items())
    mem = "{} / {} MB".format(
        *(fmt(e.get(k), ".2f") for k in ("memory_steady_mb", "memory_peak_mb"))
    )
    base = "{} / {} MB".format(
        *(fmt(e.get(f"baseline_{k}"), ".2f") for k in ("memory_steady_mb", "memory_peak_mb"))
    )
    reg = " ".join(f"{k}={v}" for k, v in (e.get("registered_model") or {}).items())
    return [
        ("test accuracy (deployed ONNX)", f"{e['test_accuracy']:.4f}"),
        ("test accuracy (compressed torch model)", f"{e['torch_test_accuracy']:.4f}"),
        ("baseline test accuracy", f"{e['baseline_test_accuracy']:.4f} (drop {drop:.2f} points)"),
        ("validation accuracy during the search", f"{e['val_accuracy_search']:.4f}"),
        (
            "latency measured / predicted (ONNX Runtime)",
            f"{e['measured_latency_ms']:.4f} / {e['predicted_latency_ms']:.4f} ms",
        ),
        (
            "baseline FP32 latency, speed-up",
            f"{e['baseline_latency_ms']:.4f} ms, {e['speedup']:.2f}x",
        ),
        ("packed bytes (model.acpk)", str(e["packed_bytes"])),
        (
            "FP32 state_dict bytes, ratio",
            f"{e['fp32_state_dict_bytes']}, {e['compression_ratio']:.1f}x",
        ),
        ("packed file reloads bit-exact", str(e["packed_reload_exact"])),
        ("deployed ONNX form", deployed_form(e)),
        (
            "deployed ONNX file bytes (baseline FP32)",
            f"{e.get('onnx_bytes') or '–'} ({e.get('baseline_onnx_bytes') or '–'})",
        ),
        (
            "resident memory steady / peak (baseline FP32)",
            f"{mem} ({base})",
        ),
        (f"throughput at {e.get('throughput_threads') or '–'} threads", tput or "–"),
        ("ONNX unpacked from the packed file equals the shipped one", str(e.get("unpack_exact"))),
        ("INT8 layers", ", ".join(e.get("int8_layers") or []) or "none"),
        ("registered model", reg or "–"),
    ]


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]


def forms_markdown(e: dict) -> list[str]:
    """What each ONNX form costs on the target, and images/s per batch size and thread count.
    Memory is what the model adds to a fresh process (net of an empty model)."""
    forms = e.get("forms") or {}
    if not forms:
        return []
    t = e["throughput_threads"]
    sizes = sorted({p["batch"] for m in forms.values() for p in m["throughput"]})
    lo, hi = sizes[0], sizes[-1]
    rows = []
    for name, m in forms.items():
        lat = {p["batch"]: p["ms"] for p in m["throughput"] if p["threads"] == t}
        acc = "" if m.get("test_accuracy") is None else f"{m['test_accuracy']:.4f}"
        rows.append(
            [
                f"**{name}** (deployed)" if m.get("deployed") else name,
                m["onnx_bytes"],
                f"{m['memory_steady_mb']:.2f}",
                f"{m['memory_peak_mb']:.2f}",
                f"{lat.get(lo, float('nan')):.3f}",
                f"{lat.get(hi, float('nan')):.3f}",
                acc,
                m.get("note", ""),
            ]
        )
    header = ["form", "file bytes", "steady MB", "peak MB", f"ms at batch {lo}"]
    header += [f"ms at batch {hi}", "test accuracy", "note"]
    tput = [
        [name, p["threads"], p["batch"], f"{p['ms']:.3f}", f"{p['images_per_s']:.0f}"]
        for name, m in forms.items()
        for p in m["throughput"]
    ]
    return [
        "## Forms on the target",
        "",
        f"Memory: resident set a fresh ONNX Runtime process gains with the model ({t} "
        f"thread(s)); latency per call at {t} thread(s).",
        "",
        *_md_table(header, rows),
        "",
        "### Throughput",
        "",
        *_md_table(["form", "threads", "batch", "ms per call", "images/s"], tput),
        "",
    ]


def _weights(lp) -> str:
    """How a layer's weights are stored, e.g. ``4-bit kmeans``, ``3-bit asymmetric per_tensor``,
    ``fp16``, ``fp32``."""
    if not lp.quantized:
        return "fp16" if lp.half else "fp32"
    if lp.quantizer == "kmeans":
        return f"{lp.bits}-bit kmeans"
    extra = [o for o in (lp.scheme, lp.granularity) if o not in ("symmetric", "per_channel")]
    return " ".join([f"{lp.bits}-bit", *extra])


def activations_markdown(stats: list[dict]) -> list[str]:
    """The activation table: each layer's output before and after compression, and the share
    of its input the 8-bit activation quantiser clips (flagged above 1 %)."""
    if not stats:
        return []
    rows = [
        [
            s["layer"],
            f"{s['before_mean']:.3g} / {s['before_std']:.3g}",
            f"{s['after_mean']:.3g} / {s['after_std']:.3g}",
            f"[{s['before_min']:.3g}, {s['before_max']:.3g}]",
            f"[{s['after_min']:.3g}, {s['after_max']:.3g}]",
            "–" if s["clipped"] is None else f"{100 * s['clipped']:.2f} %",
            "**clips > 1 %**" if s["flagged"] else "",
        ]
        for s in stats
    ]
    flagged = [s["layer"] for s in stats if s["flagged"]]
    note = (
        f"Layers whose activation quantiser clips more than 1 % of its input: "
        f"{', '.join(flagged)} (a wider calibration set or 16-bit activations there would help)."
        if flagged
        else "No layer's activation quantiser clips more than 1 % of its input."
    )
    header = ["layer", "mean / std before", "mean / std after", "range before", "range after"]
    return [
        "",
        "## Activations",
        "",
        "Each layer's output on validation batches, uncompressed vs compressed; clipped: share "
        "of the layer's input outside the 8-bit activation quantiser's range.",
        "",
        *_md_table([*header, "clipped", ""], rows),
        "",
        note,
    ]


def verification_markdown(e: dict, name: str) -> str:
    """``verification.md``: the headline rows, the forms, the per-layer policy, the files."""
    forms = e.get("deployed_forms") or {}
    policy = [
        [n, f"{lp.sparsity:.2f}", _weights(lp), f"{lp.keep_ratio:.2f}", forms.get(n, "fp32")]
        for n, lp in CompressionPolicy.from_dict(e["policy"]).items()
    ]
    lines = [f"# Export of {name}, trial {e['trial']}", ""]
    lines += _md_table(["metric", "value"], [list(r) for r in export_rows(e)]) + [""]
    lines += forms_markdown(e) + ["## Policy", ""]
    lines += _md_table(["layer", "sparsity", "weights", "keep ratio", "deployed as"], policy)
    lines += activations_markdown(e.get("activations") or [])
    lines += ["", "## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in e["artifacts"].items()]
    return "\n".join(lines) + "\n"
