"""Dev probe (issue #19): one-line policies of the small CNN screened (no fine-tune) and
fine-tuned as a trial, with the package's max-abs weight scales and with MSE-searched clipping
(monkey-patched, not in the package). Results: ``results/dev/screen_probe.json``.

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

torch.set_num_threads(1)
import autocompress.compression.quantizers as Q  # noqa: E402
from autocompress.baseline import prepare  # noqa: E402
from autocompress.search.trials import TrialEvaluator  # noqa: E402

cfg = compare._cfg("small_cnn", compare.WORK / "small_cnn" / "shared")
prep = prepare(cfg, log=lambda *a: None)


class Lat:
    def predict(self, m, p):
        return 0.0


ev = TrialEvaluator(cfg, prep.baseline, prep.data, Lat())
orig = Q.quantize_weight


def mse_qw(weight, bits, *, scheme="symmetric", granularity="per_channel"):
    if scheme != "symmetric" or bits >= 8:
        return orig(weight, bits, scheme=scheme, granularity=granularity)
    w = weight.detach().float()
    rows = w.reshape(w.shape[0] if granularity == "per_channel" else 1, -1)
    q = 2 ** (bits - 1) - 1
    amax = rows.abs().amax(dim=1)
    best_s, best_e = None, None
    for r in torch.linspace(0.3, 1.0, 29):
        s = torch.where(amax > 0, amax * r / q, torch.ones_like(amax))
        e = ((torch.clamp(torch.round(rows / s[:, None]), -q, q) * s[:, None] - rows) ** 2).sum(1)
        if best_e is None:
            best_s, best_e = s.clone(), e
        else:
            m = e < best_e
            best_s[m], best_e[m] = s[m], e[m]
    scales = Q._half_scales(best_s)
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w / scales.view(view)), -q, q)
    return codes.to(torch.int32), scales


sp = prep.space
pols = {
    "b4 s0 k1": sp.uniform_policy(0.0, 4),
    "b3 s0 k1": sp.uniform_policy(0.0, 3),
    "b4 s0.8 k1": sp.uniform_policy(0.8, 4),
    "b4 s0.5 k0.75": sp.uniform_policy(0.5, 4, 0.75),
    "b6 s0.25 k1": sp.uniform_policy(0.25, 6),
    "b8 s0.5 k0.75": sp.uniform_policy(0.5, 8, 0.75),
    "b32 s0.8 k1": sp.uniform_policy(0.8, 32),
}
out = {}
for name, pol in pols.items():
    row = {}
    for tag, fn in (("max", orig), ("mse", mse_qw)):
        Q.quantize_weight = fn
        t = time.perf_counter()
        row[f"screen_{tag}"] = ev.screen(pol).val_accuracy
        m = ev(pol)
        row[f"ft_{tag}"] = m.val_accuracy
        row[f"kb_{tag}"] = round(m.size_bytes / 1024, 1)
        row[f"s_{tag}"] = round(time.perf_counter() - t, 1)
    Q.quantize_weight = orig
    out[name] = row
    print(name, row, flush=True)
print(json.dumps(out, indent=1))
