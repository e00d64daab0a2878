"""The proxy: predicted accuracy drop, size and latency of whole policies from the per-layer
tables, vectorised over thousands of policies (no model is compressed).

- predicted drop: the sum of the per-layer, per-dimension drops (or loss increases) of the
  table — the additivity assumption, checked by :func:`.analysis.check_additivity`;
- size: the baseline's packed bytes plus, per layer, the bytes of its (sparsity, bits) scaled by
  the fraction of its weights left by channel removal (of its own and of the layers feeding it),
  plus the change in other float state (BatchNorm, biases);
- latency: the latency model's baseline plus the per-layer deltas.

Channel removal of layers coupled in one group (e.g. a residual stream) is decided by the group's
first layer in module order that asks for it; the proxy applies the same rule.
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


def _groups(structure: dict, layers: list[str]) -> dict[str, list[str]]:
    """Layers coupled with each layer for channel removal (from the measured shapes), in
    module order."""
    order = {n: i for i, n in enumerate(structure.get("numel", layers))}
    out = {}
    for name, levels in structure.get("keep", {}).items():
        members = {name}
        for rec in levels.values():
            members |= set(rec.get("out_changed", []))
        out[name] = sorted(members, key=lambda n: order.get(n, 0))
    return out


class ProxyModel:
    """Vectorised predicted drop / size / latency of policies of one space."""

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
        n_layers = len(self.codec.layers)
        names = self.codec.layers
        self._drop: list[list[np.ndarray]] = []
        self._bytes: list[np.ndarray] = []  # per layer: bytes at (sparsity, bits), full size
        self._raw: list[float] = []  # per layer: bytes as the baseline stores it
        self._ratio: list[list[np.ndarray]] = []  # per layer, per keep index: ratio per layer
        self._other: list[np.ndarray] = []  # per layer, per keep index: extra float bytes
        self._lat_s: list[np.ndarray] = []
        self._lat_bk: list[np.ndarray] = []
        groups = _groups(st, names)
        self._earlier: list[list[int]] = []
        for i, name in enumerate(names):
            s, b, k = self.codec.choices(i)
            self._drop.append(
                [
                    np.array([max(table.score(name, d, v, metric), 0.0) for v in vals])
                    for d, vals in (("sparsity", s), ("bits", b), ("keep_ratio", k))
                ]
            )
            nb = st["bytes"][name]
            grid = np.asarray(nb["bytes"])
            si = [nb["sparsity"].index(v) for v in s]
            bi = [nb["bits"].index(v) for v in b]
            self._bytes.append(grid[np.ix_(si, bi)])
            self._raw.append(float(nb["raw"]))
            ratios, other = [], []
            for kv in k:
                r = np.ones(n_layers)
                extra = 0.0
                rec = st.get("keep", {}).get(name, {}).get(f"{kv:g}")
                if rec is not None:
                    for j, n2 in enumerate(names):
                        if n2 in rec["numel"]:
                            r[j] = rec["numel"][n2] / st["numel"][n2]
                    extra = 4.0 * (rec["other_floats"] - st["other_floats"])
                ratios.append(r)
                other.append(extra)
            self._ratio.append(ratios)
            self._other.append(np.asarray(other))
            members = groups.get(name, [name])
            self._earlier.append(
                [names.index(m) for m in members[: members.index(name)] if m in names]
            )
            if latency is not None:
                le = latency[name]
                self._lat_s.append(np.array([le["sparsity"].get(f"{v:g}", 0.0) for v in s]))
                self._lat_bk.append(
                    np.array([[le["bits_keep"][f"{bv}|{kv:g}"] for kv in k] for bv in b])
                )

    def _effective_keep(self, rows: np.ndarray) -> np.ndarray:
        """Keep indices after the group rule (a layer's removal is ignored when an earlier
        coupled layer already removes channels)."""
        keep = rows[:, 2::3].copy()
        for i, earlier in enumerate(self._earlier):
            for j in earlier:
                keep[rows[:, 3 * j + 2] > 0, i] = 0
        return keep

    def evaluate(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``{"drop", "size" (bytes), "latency" (ms or NaN)}`` for each row."""
        rows = np.atleast_2d(rows)
        n = len(rows)
        keep = self._effective_keep(rows)
        drop = np.zeros(n)
        log_ratio = np.zeros((n, len(self.codec.layers)))
        other = np.zeros(n)
        latency = np.full(n, self.latency["base"] if self.latency else math.nan)
        for i in range(len(self.codec.layers)):
            ds, db, dk = self._drop[i]
            drop += ds[rows[:, 3 * i]] + db[rows[:, 3 * i + 1]] + dk[keep[:, i]]
            ratios = np.stack(self._ratio[i])  # (keep levels, layers)
            log_ratio += np.log(ratios[keep[:, i]])
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
