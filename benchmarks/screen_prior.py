"""Dev-seed check of the screen's sampler (issue #19): the screened front's validation hypervolume
(reference 5 points below the uncompressed model's screened accuracy, 1.1 x its latency and size)
for `seeds+plain` (12 enqueued one-line configs + plain NSGA-II, the method at 2215183),
`noseed+corr` (LayerCorrelatedNSGAII, nothing enqueued) and `noseed+corr16` (population 16).
Dev seeds only. Appends to benchmarks/results/screen_prior.jsonl. (`seeds+plain` needs a checkout of
2215183: the enqueued configs are gone since.)

    .venv/bin/python benchmarks/screen_prior.py noseed+corr 100 120
"""
import json, sys, time
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(REPO / "benchmarks")); sys.path.insert(0, str(REPO))
import numpy as np, optuna
import compare as C
import autocompress as ac
import importlib; S = importlib.import_module("autocompress.search.screen")
from autocompress.samplers import LayerCorrelatedNSGAII
from autocompress.search.pareto import hypervolume

variant, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]); tag = variant.replace("+", "_")
sh = C.shared("small_cnn")
out = C.WORK / "small_cnn" / f"dev-{tag}-s{seed}"
import shutil; shutil.rmtree(out, ignore_errors=True); (out / "cache").mkdir(parents=True)
for f in Path(sh["cache"]).glob("*"): shutil.copy(f, out / "cache" / f.name)
cfg = C._cfg("small_cnn", out, [f"model.checkpoint={sh['checkpoint']}", f"search.seed={seed}",
      f"search.screen_trials={n}", "search.n_trials=1", f"name=dev-{tag}-s{seed}"])
seeds, prior = variant.split("+")
if seeds == "noseed":
    S.uniform_seeds = lambda space: []
pop = 24
if prior == "corr":
    sampler = LayerCorrelatedNSGAII(population_size=pop, seed=seed)
elif prior.startswith("corr"):
    sampler = LayerCorrelatedNSGAII(population_size=int(prior[4:]), seed=seed)
else:
    sampler = optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
t0 = time.perf_counter()
ac.search(cfg, sampler=sampler, log=lambda m: print(m, flush=True) if "screen" in m else None)
wall = time.perf_counter() - t0
st = optuna.load_study(study_name=cfg.name + "-screen", storage=cfg.optuna_storage)
ref = st.user_attrs[S.REFERENCE_ATTR]
trials = [t for t in st.get_trials() if t.state.name == "COMPLETE"]
def hv(ts):
    if not ts: return 0.0
    m = [t.user_attrs["metrics"] for t in ts]
    pts = np.array([[1 - x["val_accuracy"], x["latency_ms"] / ref["latency_ms"], x["size_kb"] / ref["size_kb"]] for x in m])
    return hypervolume(pts, [1 - (ref["val_accuracy"] - 0.05), 1.1, 1.1])
samp = [t for t in trials if t.user_attrs.get("origin") is None]
res = {"variant": variant, "seed": seed, "n": len(trials), "wall": wall, "hv_all": hv(trials), "hv_sampler": hv(samp),
       "hv_uniform": hv([t for t in trials if t.user_attrs.get("origin") == "uniform"]),
       "hv_first60": hv(trials[:60])}
print(json.dumps(res))
with open(REPO / "benchmarks" / "results" / "screen_prior.jsonl", "a") as fh: fh.write(json.dumps(res) + "\n")
