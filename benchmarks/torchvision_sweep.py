"""Structured pruning on every torchvision classifier (issue #22, item 5).

Every model of ``torchvision.models.list_models(module=torchvision.models)``, randomly
initialised at a small resolution: half of the output channels of every layer that
``prunable_layers`` finds removed, 50 % sparsity and 4-bit weights on every Conv2d/Linear, a
forward pass, FP32 ONNX export, ONNX Runtime outputs within 1e-3 of PyTorch (the check is
``tests/torchvision_check.py``'s). A model passes only when it ran *and* at least one layer lost
channels; anything else must end in a one-line ``ModelError``.

Resumable: each model runs in its own subprocess (a crash or an out-of-memory kill is recorded,
not fatal) and is appended to the result JSON as it ends; a re-run skips the models already in
it at this code version.

    .venv/bin/python benchmarks/torchvision_sweep.py            # (re)run what is missing
    .venv/bin/python benchmarks/torchvision_sweep.py --report   # write the Markdown from the JSON

Results: benchmarks/results/torchvision_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import REPO, RESULTS, code_version

OUT = RESULTS / "torchvision_sweep.json"
TIMEOUT_S = 1200


def _one(name: str) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import warnings

    warnings.filterwarnings("ignore")
    import torchvision_check

    print("RESULT " + json.dumps(torchvision_check.check(name)), flush=True)


def _run(name: str) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--one", name]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"model": name, "ok": False, "stage": "timeout", "error": f">{TIMEOUT_S} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if p.returncode == -9:  # SIGKILL: the kernel's out-of-memory killer (nothing else sends it)
        return {
            "model": name,
            "ok": False,
            "stage": "skip (does not fit in 24 GiB)",
            "error": "killed by the kernel's out-of-memory killer (SIGKILL)",
            "seconds": round(time.perf_counter() - t0, 1),
        }
    tail = [ln for ln in p.stderr.splitlines() if ln.strip()][-1:] or [f"exit {p.returncode}"]
    return {
        "model": name,
        "ok": False,
        "stage": "crash",
        "error": tail[0][:300],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _load() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def report() -> None:
    data = _load()
    rows = data.get("models", [])
    passed = [r for r in rows if r["ok"] and r.get("prunable", 0) > 0]
    lines = [
        "# Structured pruning on every torchvision classifier",
        "",
        f"Code version {data.get('commit')}, torch {data.get('torch')}, torchvision "
        f"{data.get('torchvision')}, torch-pruning {data.get('torch_pruning')}. "
        "Check: half of the output channels of every prunable layer removed, 50 % sparsity, "
        "4 bits, FP32 ONNX outputs within 1e-3 (relative to max(1, max |y|)) of PyTorch "
        "(`tests/torchvision_check.py`).",
        "",
        f"**{len(passed)} of {len(rows)} pass ({100 * len(passed) / max(1, len(rows)):.1f} %)**"
        f" of {data.get('listed', '?')} listed models.",
        "",
        *([f"Note: {data['note']}", ""] if data.get("note") else []),
        "| model | input | prunable / layers | params before → after | max rel. error | "
        "s | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = r["ok"] and r.get("prunable", 0) > 0
        result = "pass" if ok else f"{r.get('stage', 'fail')}: {r.get('error', 'no layer pruned')}"
        params = f"{r.get('params', 0):,} → {r.get('params_after', 0):,}" if "params" in r else ""
        err = f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else ""
        lines.append(
            f"| {r['model']} | {r.get('resolution', '')} | {r.get('prunable', '')} / "
            f"{r.get('layers', '')} | {params} | {err} | {r.get('seconds', '')} | "
            f"{result.replace('|', '/')} |"
        )
    (RESULTS / "torchvision_sweep.md").write_text("\n".join(lines) + "\n")
    print(f"{len(passed)}/{len(rows)} pass")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--only", nargs="*", help="these models only")
    args = ap.parse_args()
    if args.one:
        return _one(args.one)
    if args.report:
        return report()
    import torch
    import torch_pruning
    import torchvision

    names = args.only or torchvision.models.list_models(module=torchvision.models)
    data = _load()
    version = code_version()
    if data.get("commit") != version:  # results of other code are stale: start again
        data = {"commit": version, "models": []}
    data |= {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_pruning": torch_pruning.__version__,
        "listed": len(torchvision.models.list_models(module=torchvision.models)),
    }
    done = {r["model"] for r in data["models"]}
    for i, name in enumerate(n for n in names if n not in done):
        rec = _run(name)
        data["models"].append(rec)
        OUT.write_text(json.dumps(data, indent=1) + "\n")
        status = "pass" if rec["ok"] and rec.get("prunable", 0) > 0 else rec.get("error", "fail")
        print(f"[{i + 1}] {name}: {status} ({rec.get('seconds', '?')} s)", flush=True)
    report()


if __name__ == "__main__":
    main()
