"""The baseline cache: trained once per content key; the cached latency is reused only where
it was measured (same machine, same batch size)."""

from __future__ import annotations

import json

from conftest import tiny_config

import autocompress as ac
from autocompress.prepare import prepare


def test_cached_latency_is_reused_only_for_the_batch_size_it_was_measured_at(
    tmp_path, fmnist_root, monkeypatch
):
    import autocompress.baseline as baseline_mod

    calls: list[tuple] = []
    monkeypatch.setattr(
        baseline_mod,
        "measure_torch_model_latency",
        lambda model, example: calls.append(tuple(example.shape)) or 1.0 + len(calls),
    )
    path = tiny_config(tmp_path, fmnist_root)
    first = prepare(ac.load_experiment(path), log=lambda *_: None).baseline
    meta = json.loads(first.checkpoint.with_suffix(".json").read_text())
    assert "latency_key" in meta and len(calls) == 1
    again = prepare(ac.load_experiment(path), log=lambda *_: None).baseline
    assert len(calls) == 1 and again.metrics.latency_ms == first.metrics.latency_ms
    # Another latency batch size: the same trained weights, a new measurement.
    other = prepare(
        ac.load_experiment(path, ["latency.batch_size=4"]), log=lambda *_: None
    ).baseline
    assert other.checkpoint == first.checkpoint
    assert calls[-1][0] == 4 and other.metrics.latency_ms != first.metrics.latency_ms
