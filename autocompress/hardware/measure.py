"""Real latency: export to ONNX and time it with ONNX Runtime on the CPU (median after warm-up,
fixed thread count), and in-graph per-node profiles of the same sessions.

Measurements on this machine are serialised through a file lock (one measurement at a time,
also across processes), repeated in rounds until two round medians agree, and preceded by a
check of how busy the CPU is with other work.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "NodeTime",
    "ThroughputPoint",
    "cpu_busy_fraction",
    "cpu_times",
    "export_onnx",
    "make_session",
    "measure_onnx_latency",
    "measure_torch_model_latency",
    "measure_passes",
    "measure_throughput",
    "measurement_lock",
    "profile_onnx_nodes",
    "random_feed",
    "steal_fraction",
    "time_session",
]

_LOCK_PATH = Path(tempfile.gettempdir()) / "autocompress-measure.lock"
_HELD = {"depth": 0}


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch dimension."""
    path = Path(path)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


@contextlib.contextmanager
def measurement_lock(timeout: float = 3600.0) -> Iterator[None]:
    """Hold the machine-wide measurement lock (an ``flock`` on a file in the temp folder);
    re-entrant within a process."""
    import fcntl

    if _HELD["depth"]:
        _HELD["depth"] += 1
        try:
            yield
        finally:
            _HELD["depth"] -= 1
        return
    with open(_LOCK_PATH, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"measurement lock {_LOCK_PATH} held too long") from None
                time.sleep(0.2)
        _HELD["depth"] = 1
        try:
            yield
        finally:
            _HELD["depth"] = 0
            fcntl.flock(fh, fcntl.LOCK_UN)


def cpu_times() -> list[int] | None:
    """The machine's cumulative CPU times (``/proc/stat`` first line: user, nice, system, idle,
    iowait, irq, softirq, steal, ...), or None where there is no ``/proc``."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None


def steal_fraction(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of the CPU time between two :func:`cpu_times` readings that the hypervisor gave
    to other guests (``steal``): on a shared VM, timings taken while it is high are slow and
    noisy. None when unknown."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after) - sum(before)
    return (after[7] - before[7]) / total if total > 0 else None


def cpu_busy_fraction(interval: float = 0.3) -> float:
    """Fraction of the machine's CPU time spent busy over ``interval`` seconds (0 when unknown).

    Called while this process is idle, it tells how much other processes use the CPU.
    """

    def _read() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        vals = [int(v) for v in fields]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return idle, sum(vals)

    a = _read()
    time.sleep(interval)
    b = _read()
    if a is None or b is None or b[1] == a[1]:
        return 0.0
    return 1.0 - (b[0] - a[0]) / (b[1] - a[1])


def make_session(path: str | Path, *, threads: int = 2, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, sequential, all optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def random_feed(input_shape: tuple[int, ...], name: str = "input") -> dict[str, np.ndarray]:
    """The input every latency measurement uses: seeded standard-normal values."""
    return {name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}


def _input(sess, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return random_feed(input_shape, sess.get_inputs()[0].name)


def time_session(
    sess,
    feed: dict[str, np.ndarray],
    *,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    tolerance: float = 0.03,
    round_seconds: float | None = None,
) -> float:
    """Milliseconds per run: median of ``repeats`` runs after ``warmup``, repeated in rounds
    until the two lowest round medians agree within ``tolerance`` (at most ``rounds``); the lower
    one is returned (interference from other processes only ever adds time). With
    ``round_seconds``, a round has fewer runs when they would take longer (at least 5)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        sess.run(None, feed)
    if round_seconds is not None and warmup:
        per_run = (time.perf_counter() - t0) / warmup
        repeats = max(5, min(repeats, int(round_seconds / max(per_run, 1e-6))))
    medians: list[float] = []
    for _ in range(max(rounds, 1)):
        times = []
        for _ in range(repeats):
            t1 = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t1) * 1e3)
        medians.append(statistics.median(times))
        low = sorted(medians)[:2]
        if len(low) == 2 and low[1] <= low[0] * (1 + tolerance):
            break
    return min(medians)


def measure_passes(
    paths: list[Path],
    feed: dict[str, np.ndarray],
    *,
    threads: int,
    passes: int = 3,
    deadline: float | None = None,
    min_passes: int = 2,
    agree: float = 0.05,
    retries: int = 3,
    **timing,
) -> list[float]:
    """End-to-end milliseconds of several ONNX models, each timed once per pass and passes
    separated in time (every model once before any model again); the minimum over the passes
    is kept, so a burst of load from other processes spoils at most one of them. Models whose
    two best passes differ by more than ``agree`` are timed again (at most ``retries`` more
    passes over them). Passes after ``min_passes`` stop at ``deadline`` (``perf_counter``)."""
    times: list[list[float]] = [[] for _ in paths]

    def one_pass(which: list[int]) -> None:
        for i in which:
            sess = make_session(paths[i], threads=threads)
            with measurement_lock():
                times[i].append(time_session(sess, feed, **timing))

    everyone = list(range(len(paths)))
    for k in range(max(passes, 1)):
        if k >= min_passes and deadline is not None and time.perf_counter() > deadline:
            break
        one_pass(everyone)
    for _ in range(retries):
        noisy = [i for i, t in enumerate(times) if _spread(t) > agree]
        if not noisy:
            break
        one_pass(noisy)
    return [min(t) for t in times]


def _spread(values: list[float]) -> float:
    """Relative gap between the two lowest values (0 with fewer than two)."""
    if len(values) < 2:
        return 0.0
    low = sorted(values)[:2]
    return (low[1] - low[0]) / low[0]


def measure_onnx_latency(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 1,
    tolerance: float = 0.03,
) -> float:
    """Median wall-clock milliseconds of one inference of the ONNX model at ``input_shape``
    (with ``rounds > 1``: repeated until stable, see :func:`time_session`)."""
    sess = make_session(path, threads=threads)
    feed = _input(sess, input_shape)
    with measurement_lock():
        return time_session(
            sess, feed, warmup=warmup, repeats=repeats, rounds=rounds, tolerance=tolerance
        )


@dataclass(frozen=True)
class ThroughputPoint:
    """One ONNX Runtime measurement: ``ms`` per call at ``batch`` images on ``threads``."""

    batch: int
    threads: int
    ms: float

    @property
    def images_per_s(self) -> float:
        return 1e3 * self.batch / self.ms if self.ms > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s}


def measure_throughput(
    path: str | Path,
    sample_shape: tuple[int, ...],
    *,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    threads: tuple[int, ...] = (1, 2),
    round_seconds: float = 0.5,
) -> list[ThroughputPoint]:
    """Latency per call and images/s of the ONNX model at each batch size and thread count
    (the timing protocol of :func:`time_session`, rounds capped at ``round_seconds``);
    ``sample_shape`` is one input without the batch dimension."""
    out = []
    for t in dict.fromkeys(threads):
        sess = make_session(path, threads=t)
        for b in dict.fromkeys(batch_sizes):
            feed = _input(sess, (b, *sample_shape))
            with measurement_lock():
                ms = time_session(sess, feed, warmup=3, repeats=30, round_seconds=round_seconds)
            out.append(ThroughputPoint(b, t, ms))
    return out


def measure_torch_model_latency(
    model: nn.Module, example: torch.Tensor, *, threads: int = 2, repeats: int = 50
) -> float:
    """Export a plain (uncompressed) model to a temporary ONNX file and measure it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, example, Path(tmp) / "model.onnx")
        return measure_onnx_latency(path, tuple(example.shape), threads=threads, repeats=repeats)


@dataclass(frozen=True)
class NodeTime:
    """One node of the optimised graph as ONNX Runtime ran it: median microseconds per run."""

    name: str
    op_type: str
    us: float
    output_elements: int


def _elements(shapes: list) -> int:
    total = 0
    for entry in shapes or []:
        for dims in entry.values():
            total += int(np.prod(dims)) if dims else 1
    return total


def profile_onnx_nodes(
    path: str | Path, input_shape: tuple[int, ...], *, threads: int = 2, runs: int = 30
) -> list[NodeTime]:
    """Per-node median durations inside whole-model runs (ONNX Runtime's profiler), in
    execution order. The first runs are warm-up and not counted."""
    warmup = max(3, runs // 3)
    with tempfile.TemporaryDirectory() as tmp:
        sess = make_session(path, threads=threads, profile_prefix=str(Path(tmp) / "prof"))
        feed = _input(sess, input_shape)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, int, int]] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        args = ev.get("args", {})
        durations[name].append(float(ev["dur"]))
        if name not in info:
            order = int(args.get("node_index", len(info)))
            info[name] = (args.get("op_name", "?"), _elements(args.get("output_type_shape")), order)
    seen_order = {name: i for i, name in enumerate(info)}
    out = []
    for name in sorted(info, key=seen_order.__getitem__):
        op, elems, _ = info[name]
        vals = durations[name][warmup:] or durations[name]
        out.append(NodeTime(name, op, float(statistics.median(vals)), elems))
    return out


def onnx_fingerprint_env() -> dict[str, str]:
    """Versions that change the deployed graph or its kernels."""
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "torch": torch.__version__.split("+")[0]}
