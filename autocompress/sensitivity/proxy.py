"""The proxy: predicted accuracy drop, size and latency of whole policies from the per-layer
tables, vectorised over thousands of policies (no model is compressed).

- predicted drop: the sum of the per-layer, per-dimension drops (or loss increases) of the
  table — the additivity assumption, checked by :func:`.analysis.check_additivity`;
- size: the baseline's packed bytes plus, per layer, the bytes of its (sparsity, bits) scaled by
  the fraction of its weights left by channel removal (of its own and of the layers feeding it),
  plus the change in other float state (BatchNorm, biases);
- latency: the latency model's baseline plus the per-layer deltas.

Channel removal follows the compressor's rule, read off the measured shapes: layers are pruned in
module order and a layer is skipped when its pruning group overlaps one already pruned (the
structure record says whether groups are the layers whose output channels change, or every layer
the removal touches, consumers included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..policy import CompressionPolicy, LayerPolicy
from ..search_space import SearchSpace
from .table import SensitivityTable

__all__ = ["PolicyCodec", "ProxyModel"]


@dataclass
class PolicyCodec:
    """Policies of a space as integer rows: per layer the indices of its sparsity, bits and
    keep_ratio choices (columns ``3*i``, ``3*i+1``, ``3*i+2``)."""

    space: SearchSpace
    layers: list[str] = field(init=False)
    sizes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.layers = list(self.space.layers)
        sizes = []
        for ch in self.space.layers.values():
            sizes += [len(ch.sparsity), len(ch.bits), len(ch.keep_ratio)]
        self.sizes = np.asarray(sizes, dtype=int)

    def choices(self, i: int) -> tuple[tuple, tuple, tuple]:
        ch = self.space.layers[self.layers[i]]
        return ch.sparsity, ch.bits, ch.keep_ratio

    def random(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return (rng.random((n, len(self.sizes))) * self.sizes).astype(int)

    def policy(self, row: np.ndarray) -> CompressionPolicy:
        out = {}
        for i, name in enumerate(self.layers):
            s, b, k = self.choices(i)
            out[name] = LayerPolicy(
                sparsity=float(s[row[3 * i]]),
                bits=int(b[row[3 * i + 1]]),
                keep_ratio=float(k[row[3 * i + 2]]),
            )
        return CompressionPolicy(out)

    def params(self, row: np.ndarray) -> dict:
        """Optuna params of the row (exactly the keys of ``space.choices()``)."""
        return self.space.params_from_policy(self.policy(row))

    def encode(self, policy: CompressionPolicy) -> np.ndarray:
        row = np.zeros(len(self.sizes), dtype=int)
        for i, name in enumerate(self.layers):
            lp = policy.layers.get(name, LayerPolicy())
            for j, (opts, v) in enumerate(
                zip(self.choices(i), (lp.sparsity, lp.bits, lp.keep_ratio), strict=True)
            ):
                row[3 * i + j] = int(np.argmin([abs(float(o) - float(v)) for o in opts]))
        return row


def _skip_sets(structure: dict, name: str, value: float) -> set[str]:
    rec = structure.get("keep", {}).get(name, {}).get(f"{value:g}")
    if rec is None:
        return {name}
    if structure.get("skip_rule") == "touched":
        return {name, *rec["numel"]}
    return {name, *rec["out_changed"]}


class ProxyModel:
    """Vectorised predicted drop / size / latency of policies of one space.

    Per layer, keep-ratio arrays have one extra last entry: "no channel removed" (used when
    the compressor skips the layer's removal, or for keep 1.0).
    """

    def __init__(
        self,
        space: SearchSpace,
        table: SensitivityTable,
        *,
        base_bytes: int,
        latency: dict | None = None,
        metric: str = "drop",
    ) -> None:
        self.codec = PolicyCodec(space)
        self.metric = metric
        self.base_bytes = float(base_bytes)
        self.latency = latency
        st = table.structure
        names = self.codec.layers
        col = {n: j for j, n in enumerate(names)}
        self._drop: list[list[np.ndarray]] = []  # per layer: drops of s, b, k (+ identity)
        self._bytes: list[np.ndarray] = []  # per layer: bytes at (sparsity, bits), full size
        self._raw: list[float] = []  # per layer: bytes as the baseline stores it
        self._ratio: list[np.ndarray] = []  # per layer: (keep + identity, layers) weight ratios
        self._other: list[np.ndarray] = []  # per layer: extra float bytes per keep (+ identity)
        self._skip: list[np.ndarray] = []  # per layer: (keep + identity, layers) group masks
        self._lat_s: list[np.ndarray] = []
        self._lat_bk: list[np.ndarray] = []  # (bits, keep + identity)
        for i, name in enumerate(names):
            s, b, k = self.codec.choices(i)
            kk = (*k, 1.0)
            self._drop.append(
                [
                    np.array([max(table.score(name, d, v, metric), 0.0) for v in vals])
                    for d, vals in (("sparsity", s), ("bits", b), ("keep_ratio", kk))
                ]
            )
            nb = st["bytes"][name]
            si = [nb["sparsity"].index(v) for v in s]
            bi = [nb["bits"].index(v) for v in b]
            self._bytes.append(np.asarray(nb["bytes"])[np.ix_(si, bi)])
            self._raw.append(float(nb["raw"]))
            ratio = np.ones((len(kk), len(names)))
            other = np.zeros(len(kk))
            skip = np.zeros((len(kk), len(names)), dtype=bool)
            for m, kv in enumerate(kk):
                rec = st.get("keep", {}).get(name, {}).get(f"{kv:g}")
                if kv >= 1.0 or rec is None:
                    continue
                for n2, numel in rec["numel"].items():
                    if n2 in col:
                        ratio[m, col[n2]] = numel / st["numel"][n2]
                other[m] = 4.0 * (rec["other_floats"] - st["other_floats"])
                for n2 in _skip_sets(st, name, kv):
                    if n2 in col:
                        skip[m, col[n2]] = True
            self._ratio.append(ratio)
            self._other.append(other)
            self._skip.append(skip)
            if latency is not None:
                le = latency[name]
                self._lat_s.append(np.array([le["sparsity"].get(f"{v:g}", 0.0) for v in s]))
                self._lat_bk.append(
                    np.array([[le["bits_keep"][f"{bv}|{kv:g}"] for kv in kk] for bv in b])
                )

    def effective_keep(self, rows: np.ndarray) -> np.ndarray:
        """Per row and layer, the keep index the compressor really applies (the identity
        index ``len(keep choices)`` where it removes nothing)."""
        n = len(rows)
        eff = np.zeros((n, len(self.codec.layers)), dtype=int)
        done = np.zeros((n, len(self.codec.layers)), dtype=bool)
        for i in range(len(self.codec.layers)):
            k = rows[:, 3 * i + 2]
            ident = len(self.codec.choices(i)[2])
            prunes = self._skip[i][k].any(axis=1)  # keep < 1 and known
            clash = np.any(done & self._skip[i][k], axis=1)
            apply = prunes & ~clash
            eff[:, i] = np.where(apply, k, ident)
            done |= np.where(apply[:, None], self._skip[i][k], False)
        return eff

    def evaluate(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``{"drop", "size" (bytes), "latency" (ms or NaN)}`` for each row."""
        rows = np.atleast_2d(rows)
        n = len(rows)
        keep = self.effective_keep(rows)
        drop = np.zeros(n)
        log_ratio = np.zeros((n, len(self.codec.layers)))
        other = np.zeros(n)
        latency = np.full(n, self.latency["base"] if self.latency else math.nan)
        for i in range(len(self.codec.layers)):
            ds, db, dk = self._drop[i]
            drop += ds[rows[:, 3 * i]] + db[rows[:, 3 * i + 1]] + dk[keep[:, i]]
            log_ratio += np.log(self._ratio[i][keep[:, i]])
            other += self._other[i][keep[:, i]]
            if self.latency is not None:
                latency += self._lat_s[i][rows[:, 3 * i]]
                latency += self._lat_bk[i][rows[:, 3 * i + 1], keep[:, i]]
        frac = np.exp(log_ratio)
        size = np.full(n, self.base_bytes) + other
        for i in range(len(self.codec.layers)):
            full = self._bytes[i][rows[:, 3 * i], rows[:, 3 * i + 1]]
            size += full * frac[:, i] - self._raw[i]
        return {"drop": drop, "size": size, "latency": latency}

    def separable(self, kind: str) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Per layer: every (sparsity, bits, keep) index triple, its cost counted as if layers
        were independent (``size``: own bytes after its own channel removal plus the change in
        other float state, relative to the baseline; ``latency``: the latency delta) and its
        summed sensitivity. The knapsack works on these."""
        if kind == "latency" and self.latency is None:
            raise ValueError("latency costs need the latency deltas of a latency model")
        combos, costs, values = [], [], []
        for i in range(len(self.codec.layers)):
            ns, nb, nk = self.codec.sizes[3 * i : 3 * i + 3]
            grid = np.meshgrid(np.arange(ns), np.arange(nb), np.arange(nk), indexing="ij")
            s, b, k = (g.ravel() for g in grid)
            ds, db, dk = self._drop[i]
            values.append(ds[s] + db[b] + dk[k])
            if kind == "size":
                own = self._ratio[i][:, i]
                costs.append(self._bytes[i][s, b] * own[k] + self._other[i][k] - self._raw[i])
            else:
                costs.append(self._lat_s[i][s] + self._lat_bk[i][b, k])
            combos.append(np.stack([s, b, k], axis=1))
        return combos, costs, values

    def base(self, kind: str) -> float:
        """The baseline's cost that :meth:`separable` costs are relative to."""
        return self.base_bytes if kind == "size" else float(self.latency["base"])
