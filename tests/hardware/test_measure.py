from autocompress.hardware import measure


class _Clock:
    """A fake clock: sleeping and timing a model advance it."""

    def __init__(self, per_model: float):
        self.now, self.per_model, self.starts = 0.0, per_model, []

    def perf_counter(self):
        return self.now

    def sleep(self, s):
        assert s >= 0
        self.now += s

    def latency(self, path, shape, threads, **timing):
        self.starts.append((path, self.now))
        self.now += self.per_model
        return 1.0  # the passes agree: no retries


def _patch(monkeypatch, clock):
    monkeypatch.setattr(measure, "measure_onnx_latency", clock.latency)
    monkeypatch.setattr(measure.time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(measure.time, "sleep", clock.sleep)


def test_passes_are_spread_over_the_span(monkeypatch):
    clock = _Clock(per_model=1.0)
    _patch(monkeypatch, clock)
    measure.measure_passes(["a", "b"], (1,), threads=1, passes=3, span_seconds=90, max_passes=10)
    starts = [t for p, t in clock.starts if p == "a"]
    # two models take 2 s a pass: without the span all 3 passes would fall within 6 s
    assert starts[-1] - starts[0] >= 90
    assert 3 <= len(starts) <= 10
    assert all(b - a >= 9.9 for a, b in zip(starts, starts[1:], strict=False))  # spaced


def test_long_passes_need_no_sleep_and_stop_once_the_span_is_covered(monkeypatch):
    clock = _Clock(per_model=30.0)
    _patch(monkeypatch, clock)
    measure.measure_passes(["a", "b"], (1,), threads=1, passes=3, span_seconds=120)
    starts = [t for p, t in clock.starts if p == "a"]
    assert starts == [0.0, 60.0, 120.0]


def test_the_deadline_wins_over_the_span(monkeypatch):
    clock = _Clock(per_model=1.0)
    _patch(monkeypatch, clock)
    measure.measure_passes(
        ["a"], (1,), threads=1, passes=3, span_seconds=1000, deadline=20.0, min_passes=2
    )
    starts = [t for p, t in clock.starts if p == "a"]
    assert len(starts) >= 2 and starts[-1] <= 20.0


def test_without_a_span_exactly_the_passes_run(monkeypatch):
    clock = _Clock(per_model=1.0)
    _patch(monkeypatch, clock)
    measure.measure_passes(["a", "b", "c"], (1,), threads=1, passes=3)
    assert len(clock.starts) == 9


def test_no_pass_is_scheduled_past_the_deadline(monkeypatch):
    # passes would be due at 0, 20, 40, ...: the one due after the deadline is not started
    clock = _Clock(per_model=1.0)
    _patch(monkeypatch, clock)
    measure.measure_passes(
        ["a"], (1,), threads=1, passes=3, span_seconds=180, deadline=50.0, min_passes=2
    )
    starts = [t for _, t in clock.starts]
    assert starts == [0.0, 20.0, 40.0] and clock.now <= 50.0


def test_more_passes_than_max_passes_still_cover_only_the_span(monkeypatch):
    clock = _Clock(per_model=0.5)
    _patch(monkeypatch, clock)
    measure.measure_passes(["a"], (1,), threads=1, passes=5, span_seconds=40, max_passes=3)
    starts = [t for _, t in clock.starts]
    assert len(starts) == 5 and starts[-1] == 40.0
