"""The baseline cache: trained once per content key; the cached latency is reused only where
it was measured (same machine, same batch size)."""

from __future__ import annotations

import json

from conftest import tiny_config

import autocompress as ac
from autocompress.baseline import prepare


def test_cached_latency_is_reused_only_for_the_batch_size_it_was_measured_at(
    tmp_path, fmnist_root, monkeypatch
):
    import autocompress.baseline as baseline_mod

    calls: list[tuple] = []
    used: list[int] = []  # threads of each measurement

    def measure(model, example, threads):
        calls.append(tuple(example.shape))
        used.append(threads)
        return 1.0 + len(calls)

    monkeypatch.setattr(baseline_mod, "measure_torch_model_latency", measure)
    path = tiny_config(tmp_path, fmnist_root)
    target = ["latency.target=cpu-onnxruntime"]  # one ONNX Runtime thread
    first = prepare(ac.load_experiment(path, target), log=lambda *_: None).baseline
    meta = json.loads(first.checkpoint.with_suffix(".json").read_text())
    assert "latency_key" in meta and len(calls) == 1
    assert used == [1]  # the target's threads, not a fixed count
    again = prepare(ac.load_experiment(path, target), log=lambda *_: None).baseline
    assert len(calls) == 1 and again.metrics.latency_ms == first.metrics.latency_ms
    # Another latency batch size: the same trained weights, a new measurement.
    other = prepare(
        ac.load_experiment(path, [*target, "latency.batch_size=4"]), log=lambda *_: None
    ).baseline
    assert other.checkpoint == first.checkpoint
    assert calls[-1][0] == 4 and other.metrics.latency_ms != first.metrics.latency_ms
