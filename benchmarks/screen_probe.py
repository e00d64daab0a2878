"""Dev probe (issue #19): one-line policies of the small CNN screened (no fine-tune) and
fine-tuned as a trial, with the package's max-abs weight scales and with MSE-searched clipping
(monkey-patched, not in the package). Writes ``results/dev/screen_probe.json``.

    .venv/bin/python benchmarks/screen_probe.py
"""

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

import compare  # noqa: E402
import torch  # noqa: E402
from common import code_version  # noqa: E402

import autocompress.compression.quantizers as Q  # noqa: E402
from autocompress.baseline import prepare  # noqa: E402
from autocompress.search.trials import TrialEvaluator  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "dev" / "screen_probe.json"
MAX_ABS = Q.quantize_weight


def mse_clipped(weight, bits, *, scheme="symmetric", granularity="per_channel"):
    """:func:`quantize_weight` with each scale clipped to the ratio (0.3-1.0 of max-abs) that
    minimises the squared rounding error of its row; below 8 bits, symmetric only."""
    if scheme != "symmetric" or bits >= 8:
        return MAX_ABS(weight, bits, scheme=scheme, granularity=granularity)
    w = weight.detach().float()
    rows = w.reshape(w.shape[0] if granularity == "per_channel" else 1, -1)
    q = 2 ** (bits - 1) - 1
    amax = rows.abs().amax(dim=1)
    best_s, best_e = torch.ones_like(amax), torch.full_like(amax, float("inf"))
    for r in torch.linspace(0.3, 1.0, 29):
        s = torch.where(amax > 0, amax * r / q, torch.ones_like(amax))
        e = ((torch.clamp(torch.round(rows / s[:, None]), -q, q) * s[:, None] - rows) ** 2).sum(1)
        better = e < best_e
        best_s[better], best_e[better] = s[better], e[better]
    scales = Q._half_scales(best_s)
    codes = torch.clamp(torch.round(w / scales.view((-1,) + (1,) * (w.dim() - 1))), -q, q)
    return codes.to(torch.int32), scales


class _NoLatency:
    def predict(self, model, policy):
        return 0.0


def main() -> None:
    torch.set_num_threads(compare.THREADS)
    cfg = compare._cfg("small_cnn", compare.WORK / "small_cnn" / "shared")
    prep = prepare(cfg, log=lambda *a: None)
    ev = TrialEvaluator(cfg, prep.baseline, prep.data, _NoLatency())
    sp = prep.space
    policies = {
        "b4 s0 k1": sp.uniform_policy(0.0, 4),
        "b3 s0 k1": sp.uniform_policy(0.0, 3),
        "b4 s0.8 k1": sp.uniform_policy(0.8, 4),
        "b4 s0.5 k0.75": sp.uniform_policy(0.5, 4, 0.75),
        "b6 s0.25 k1": sp.uniform_policy(0.25, 6),
        "b8 s0.5 k0.75": sp.uniform_policy(0.5, 8, 0.75),
        "b32 s0.8 k1": sp.uniform_policy(0.8, 32),
    }
    rows = {}
    for name, policy in policies.items():
        row = {}
        for tag, fn in (("max", MAX_ABS), ("mse", mse_clipped)):
            Q.quantize_weight = fn
            t = time.perf_counter()
            row[f"screen_{tag}"] = ev.screen(policy).val_accuracy
            m = ev(policy)
            row |= {f"ft_{tag}": m.val_accuracy, f"kb_{tag}": round(m.size_bytes / 1024, 1)}
            row[f"s_{tag}"] = round(time.perf_counter() - t, 1)
        Q.quantize_weight = MAX_ABS
        rows[name] = row
        print(name, row, flush=True)
    OUT.write_text(
        json.dumps(
            {
                "what": "screened (no fine-tune) vs fine-tuned validation accuracy and packed KB "
                "of one-line policies, max-abs vs MSE-clipped weight scales",
                "commit": code_version(),
                "date": time.strftime("%Y-%m-%d"),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
