"""The sensitivity stage of a search, behind four calls: :meth:`SensitivityStage.start` (table
from cache or measured, shaped space), :meth:`~SensitivityStage.initial_trials` (warm start and
the two-stage proxy's candidates, to enqueue in a new study), :meth:`~SensitivityStage.log`
(files and metrics to MLflow) and :meth:`~SensitivityStage.finish` (how well the predicted
drop ranked the trials' real, fine-tuned drops).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.trial import TrialState

from ..policy import CompressionPolicy
from ..search_space import SearchSpace
from .allocate import Candidate, policy_key, proxy_front, spread, uniform_corners, warm_start
from .analysis import analyze, checks_path, make_proxy, policy_drop, real_costs
from .greedy import greedy_chain
from .greedy import relative_cost as _relative_cost
from .proxy import ProxyModel
from .report import heatmap_html, heatmap_png, log_files, write_json, write_table
from .settings import SensitivitySettings
from .shaping import describe_shaping, shape_space, shaping_report
from .table import SensitivityTable, spearman

if TYPE_CHECKING:
    import optuna

    from ..search.run import Prepared

__all__ = ["SensitivityStage"]

_CANDIDATE_MAX_DROP = 25.0  # proxy-stage candidates: predicted drop at most this (points)


class SensitivityStage:
    """State shared by the sensitivity call sites of one search."""

    def __init__(
        self, prep: Prepared, settings: SensitivitySettings, table: SensitivityTable, log
    ) -> None:
        self.prep, self.settings, self.table, self._log = prep, settings, table, log
        self.space: SearchSpace = shape_space(prep.space, table, settings)
        self.proxy: ProxyModel | None = None
        self.warm: list[Candidate] = []
        self.uniform: list[dict] = []
        self.stage1: dict[str, Any] = {}
        self.out_dir: Path = prep.cfg.output_dir / "sensitivity"
        self._front_rows: list[dict] = []

    @classmethod
    def start(
        cls,
        prep: Prepared,
        settings: SensitivitySettings,
        *,
        force: bool = False,
        log: Callable[[str], None] = print,
    ) -> SensitivityStage | None:
        """Table (cached or measured) and shaped space; None when the stage is disabled."""
        if not settings.enabled:
            return None
        stage = cls(prep, settings, analyze(prep, settings, force=force, log=log), log)
        if settings.shape:
            for line in describe_shaping(prep.space, stage.space):
                log(f"  shaped {line}")
            log(
                f"sensitivity: shaped space {prep.space.cardinality:.3g} -> "
                f"{stage.space.cardinality:.3g} policies"
            )
        return stage

    # -- trials to enqueue --------------------------------------------------------------------
    def initial_trials(
        self, latency_model=None, *, objectives: list[str], n_trials: int, seed: int = 0
    ) -> list[tuple[dict, dict]]:
        """``(params, user_attrs)`` to enqueue before the sampler takes over: the warm-start
        knapsack allocations and the uniform corners (``user_attrs["warm_start"]``), and with
        ``two_stage`` the proxy front's candidates (``user_attrs["proxy_stage"]``), warm-start
        ones first."""
        s = self.settings
        lat = latency_model if "latency" in objectives else None
        self.proxy = make_proxy(self.prep, self.space, self.table, s, latency_model=lat)
        kind = s.budget if self.proxy.latency is not None else "size"
        measure = real_costs(self.prep, lat)
        greedy = s.warm_start_method == "greedy"
        check = self._check() if greedy or s.warm_start_max_drop is not None else None
        corners = self._uniform(check)
        n_warm = s.warm_start
        if greedy and n_warm:
            self.warm = self._greedy(corners, check, measure)
        elif n_warm:
            self.warm = warm_start(
                self.proxy,
                n=n_warm,
                kind=kind,
                measure=measure,
                check=check,
                max_drop=s.warm_start_max_drop,
            )
        else:
            self.warm = []
        for c in self.warm:
            checked = (
                f", measured drop before fine-tune {c.real['drop']:.2f}"
                + (f" (budget loosened {c.loosened}x)" if c.loosened else "")
                if "drop" in c.real
                else ""
            )
            what = (
                f"greedy step within {c.budget:g} points"
                if c.kind == "greedy"
                else f"{kind} budget {c.budget:.4g}"
            )
            self._log(
                f"sensitivity: warm start, {what}: predicted drop "
                f"{c.predicted['drop']:.2f}{checked}, size "
                f"{c.real.get('size', float('nan')) / 1024:.1f} KB "
                f"(estimated {c.predicted['size'] / 1024:.1f})"
            )
        if n_warm and len(self.warm) < n_warm:
            self._log(
                f"sensitivity: {n_warm - len(self.warm)} warm-start allocation(s) dropped "
                + (
                    "(the greedy chain made no progress at that tolerance)"
                    if greedy
                    else "(duplicate, or over the cost or warm_start_max_drop even at looser "
                    "budgets)"
                )
            )
        known = {policy_key(self.proxy.codec.policy(c.row)) for c in self.warm}
        out = [(p, a) for p, a, pol in corners if policy_key(pol) not in known]
        out += [(self.proxy.codec.params(c.row), {"warm_start": c.attrs()}) for c in self.warm]
        if not s.two_stage:
            return out
        t0 = time.perf_counter()
        rows, vals, n_eval = proxy_front(
            self.proxy,
            objectives=objectives,
            n_policies=s.proxy_policies,
            seed=seed,
            seeds=[c.row for c in self.warm],
        )
        k = max((s.proxy_candidates or n_trials - 1) - len(out), 0)
        warm_keys = {c.row.tobytes() for c in self.warm}
        first = [i for i, r in enumerate(rows) if r.tobytes() in warm_keys]
        # Candidates where a model may still be useful, spread on log scales (relative steps
        # in drop, size and latency); the warm-start allocations are taken first.
        keep = [i for i in range(len(rows)) if vals[i, 0] <= _CANDIDATE_MAX_DROP or i in first]
        scaled = np.log1p(np.maximum(vals[keep], 0.0))
        sub_first = [keep.index(i) for i in first]
        chosen = spread(scaled, k + len(sub_first), first=sub_first)
        picked = [keep[j] for j in chosen if keep[j] not in first]
        self.stage1 = {
            "evaluated": n_eval,
            "front": len(rows),
            "candidates": len(picked),
            "seconds": time.perf_counter() - t0,
            "objectives": objectives,
        }
        self._log(
            f"sensitivity: proxy stage scored {n_eval} policies in {self.stage1['seconds']:.1f} s: "
            f"{len(rows)} on its front, {len(picked)} candidates for the real evaluation"
        )
        preds = self.proxy.evaluate(rows)
        self._front_rows = [
            {
                "predicted_drop": float(preds["drop"][i]),
                "estimated_size_kb": float(preds["size"][i]) / 1024,
                "estimated_latency_ms": float(preds["latency"][i]),
                "candidate": i in picked,
                "summary": self.proxy.codec.policy(rows[i]).summary(),
            }
            for i in range(len(rows))
        ]
        for i in picked:
            cand = Candidate(rows[i], {k: float(v[i]) for k, v in preds.items()}, kind="proxy")
            out.append((self.proxy.codec.params(rows[i]), {"proxy_stage": cand.attrs()}))
        return out

    def _check(self):
        """The whole-policy check, cached beside the table (same key)."""
        key = self.table.meta.get("key")
        cache = checks_path(self.prep.cfg.output_dir, key) if key else None
        return policy_drop(self.prep, self.settings, cache=cache)

    def _tolerance(self) -> float:
        s = self.settings
        return s.warm_start_max_drop if s.warm_start_max_drop is not None else s.max_drop

    def _uniform(self, check) -> list[tuple[dict, dict, CompressionPolicy]]:
        """The uniform corners (``uniform_start``), checked like the warm start:
        ``(params, user_attrs, policy)`` each."""
        s = self.settings
        if not s.uniform_start:
            return []
        if check is None:
            check = self._check()
        out = []
        for corner in uniform_corners(self.space, list(s.uniform_start), check, self._tolerance()):
            pol, drop = corner["policy"], corner["drop"]
            self._log(
                f"sensitivity: uniform start at {corner['bits']} bits, sparsity "
                f"{corner['sparsity']:.2f} ({pol.summary()}): measured drop before fine-tune "
                f"{drop:.2f}"
            )
            attrs = {
                "kind": "uniform",
                "bits": corner["bits"],
                "sparsity": corner["sparsity"],
                "real_drop": drop,
            }
            self.uniform.append(attrs | {"policy": pol.to_dict()})
            out.append((self.space.params_from_policy(pol), {"warm_start": attrs}, pol))
        return out

    def _greedy(self, corners, check, measure) -> list[Candidate]:
        """The measured greedy chain from the most compressed passing uniform corner (else the
        least compressed policy), one snapshot per tolerance: ``warm_start_max_drop`` doubled
        ``warm_start - 1`` times."""
        s, codec = self.settings, self.proxy.codec
        starts = [(codec.encode(pol), a["warm_start"]["real_drop"]) for _, a, pol in corners]
        if not starts:
            starts = [(codec.encode(CompressionPolicy({})), None)]
        cost = _relative_cost(self.proxy.evaluate(np.stack([r for r, _ in starts])))
        row, drop = starts[int(np.argmin(cost))]
        tol = self._tolerance()
        return greedy_chain(
            self.proxy,
            row,
            check,
            tolerances=[tol * 2**k for k in range(s.warm_start)],
            max_checks=s.greedy_checks,
            measure=measure,
            start_drop=drop,
        )

    # -- MLflow -------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        """Write the stage's files into ``output_dir/sensitivity`` and return them."""
        d = self.out_dir
        name = self.prep.cfg.name
        title = f"{name}: sensitivity per layer and level ({self.table.meta.get('images')} images)"
        paths = write_table(self.table, d)
        paths += [
            heatmap_html(self.table, d / "sensitivity_heatmap.html", title=title),
            heatmap_png(self.table, d / "sensitivity_heatmap.png", title=title),
            write_json(
                d / "sensitivity_shaped_space.json",
                shaping_report(self.prep.space, self.space) | {"settings": self.settings.to_dict()},
            ),
        ]
        if self.warm or self.uniform:
            warm = [{"params": self.proxy.codec.params(c.row), **c.attrs()} for c in self.warm]
            warm += self.uniform
            paths.append(write_json(d / "sensitivity_warm_start.json", warm))
        if self._front_rows:
            p = d / "sensitivity_proxy_front.csv"
            with p.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(self._front_rows[0]))
                w.writeheader()
                w.writerows(self._front_rows)
            paths.append(p)
        return paths

    def metrics(self) -> dict[str, float]:
        m = self.table.meta
        out = {
            "sensitivity_seconds": float(m.get("seconds", 0.0)),
            "sensitivity_cached": float(bool(m.get("cached"))),
            "sensitivity_levels": float(len(self.table.rows)),
            "sensitivity_space_before": float(self.prep.space.cardinality),
            "sensitivity_space_after": float(self.space.cardinality),
        }
        if self.proxy is not None:  # initial_trials ran (a new study), not a resumed one
            out["sensitivity_warm_start"] = float(len(self.warm))
            out["sensitivity_uniform_start"] = float(len(self.uniform))
        agree = m.get("agreement", {})
        if "spearman_drop" in agree:
            out["sensitivity_estimator_spearman"] = float(agree["spearman_drop"])
        errs = [
            abs(c.predicted["size"] - c.real["size"]) / c.real["size"]
            for c in self.warm
            if "size" in c.real
        ]
        if errs:
            out["sensitivity_size_estimate_error"] = float(np.mean(errs))
        if self.stage1:
            out["proxy_stage_evaluated"] = float(self.stage1["evaluated"])
            out["proxy_stage_front"] = float(self.stage1["front"])
            out["proxy_stage_seconds"] = float(self.stage1["seconds"])
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def log(self, tracker, run_id: str) -> None:
        """Files under ``sensitivity/`` and ``sensitivity_*`` metrics on the run."""
        log_files(tracker, run_id, self.files())
        tracker.log_search_metrics(run_id, self.metrics())

    # -- after the search ---------------------------------------------------------------------
    def agreement(self, study: optuna.Study, baseline_val_accuracy: float) -> dict[str, Any]:
        """Spearman of the predicted drop vs the real (fine-tuned) validation drop over the
        study's complete trials, overall and for the proxy-stage candidates."""
        if self.proxy is None:
            self.proxy = make_proxy(self.prep, self.space, self.table, self.settings)
        rows = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            pol, met = t.user_attrs.get("policy"), t.user_attrs.get("metrics")
            if not pol or not met:
                continue
            row = self.proxy.codec.encode(CompressionPolicy.from_dict(pol))
            origin = next(
                (k for k in ("warm_start", "proxy_stage", "anchor") if k in t.user_attrs), "sampler"
            )
            rows.append(
                {
                    "trial": t.number,
                    "origin": origin,
                    "predicted_drop": float(self.proxy.evaluate(row)["drop"][0]),
                    "real_drop": 100.0 * (baseline_val_accuracy - met["val_accuracy"]),
                }
            )
        pred = [r["predicted_drop"] for r in rows]
        real = [r["real_drop"] for r in rows]
        proxy_rows = [r for r in rows if r["origin"] == "proxy_stage"]
        return {
            "n": len(rows),
            "spearman": spearman(pred, real),
            "n_proxy_stage": len(proxy_rows),
            "spearman_proxy_stage": spearman(
                [r["predicted_drop"] for r in proxy_rows], [r["real_drop"] for r in proxy_rows]
            ),
            "trials": rows,
        }

    def finish(self, study: optuna.Study, tracker, run_id: str, baseline_val_accuracy: float):
        """Log :meth:`agreement` (metric ``sensitivity_proxy_spearman`` and a JSON file).
        A failure here is reported, not raised: the search's results are already stored."""
        try:
            return self._finish(study, tracker, run_id, baseline_val_accuracy)
        except Exception as exc:  # noqa: BLE001 - reporting only
            self._log(f"sensitivity: agreement report failed ({type(exc).__name__}: {exc})")
            return None

    def _finish(self, study, tracker, run_id: str, baseline_val_accuracy: float) -> dict:
        res = self.agreement(study, baseline_val_accuracy)
        path = write_json(self.out_dir / "sensitivity_proxy_vs_trials.json", res)
        log_files(tracker, run_id, [path])
        metrics = {"sensitivity_proxy_spearman": res["spearman"]}
        metrics["sensitivity_proxy_spearman_stage2"] = res["spearman_proxy_stage"]
        tracker.log_search_metrics(run_id, {k: v for k, v in metrics.items() if np.isfinite(v)})
        if np.isfinite(res["spearman"]):
            self._log(
                f"sensitivity: predicted vs real (fine-tuned) drop over {res['n']} trials: "
                f"Spearman {res['spearman']:.3f}"
            )
        return res
