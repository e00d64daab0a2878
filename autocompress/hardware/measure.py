"""Real latency and memory: export to ONNX and time it with ONNX Runtime on the CPU, in-graph
per-node profiles of the same sessions, resident memory, and what identifies the machine
measured. Measurements are serialised through a file lock (one at a time, also across
processes), repeated in rounds until two round medians agree, and preceded by a check of how
busy the CPU is with other work.

Resident memory is measured on fresh processes (``_memory_probe.py``) that run the model, net of
an *empty* model (one ``Identity`` node): ``steady_mb`` from the resident set after the runs
(``VmRSS``), ``peak_mb`` from the process peak (``VmHWM``: load, graph optimisation and weight
pre-packing included; ``tracemalloc`` misses ONNX Runtime's native allocations). The median over
``repeats`` processes is kept.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from ..errors import AutocompressError
from ._memory_probe import make_session

# one measurement at a time on this machine, also across processes; re-entrant in a process
MEASUREMENT_LOCK = FileLock(
    Path(tempfile.gettempdir()) / "autocompress-measure.lock", timeout=3600, thread_local=False
)
_PROBE = Path(__file__).with_name("_memory_probe.py")
_ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni")


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


def cpu_times() -> list[int] | None:
    """Cumulative CPU times (``/proc/stat``: user, nice, system, idle, iowait, irq, softirq,
    steal, ...), or None where there is no ``/proc``."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None


def steal_fraction(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of the CPU time between two :func:`cpu_times` the hypervisor gave to other guests
    (timings taken while it is high are slow and noisy); None when unknown."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after) - sum(before)
    return (after[7] - before[7]) / total if total > 0 else None


def warn_if_busy(what: str, log: Callable[[str], None], interval: float = 0.5) -> float:
    """Fraction of the CPU busy over ``interval`` seconds while this process idles (0 when
    unknown): how much other processes use it; ``log`` warns above 30 %."""
    a = cpu_times()
    time.sleep(interval)
    b = cpu_times()
    if a is None or b is None or sum(b) == sum(a):
        return 0.0

    def idle(v: list[int]) -> int:
        return v[3] + (v[4] if len(v) > 4 else 0)

    busy = 1.0 - (idle(b) - idle(a)) / (sum(b) - sum(a))
    if busy > 0.3:
        log(f"{what}: other processes keep the CPU {busy:.0%} busy: timings may be noisy")
    return busy


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields ({} where unreadable)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() in out:
            break  # the next processor
        if sep:
            out[key.strip()] = value.strip()
    return out


def machine_fingerprint() -> dict[str, str]:
    """What makes a latency table valid only on this kind of machine (CPU, ISA, versions)."""
    import onnxruntime as ort

    info, cpu = cpu_info(), platform.processor() or platform.machine()
    if "model name" in info and cpu in ("", platform.machine()):
        cpu = info["model name"]
    have = set(info.get("flags", "").split())
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": str(os.cpu_count()),
        "isa": ",".join(f for f in _ISA if f in have),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__.split("+")[0],
    }


def random_feed(input_shape: tuple[int, ...], name: str = "input") -> dict[str, np.ndarray]:
    """The input every latency measurement uses: seeded standard-normal values."""
    return {name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}


def measure_onnx_latency(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 1,
    tolerance: float = 0.03,
    round_seconds: float | None = None,
) -> float:
    """Milliseconds per run of the ONNX model at ``input_shape`` (the one timing protocol).

    The median of ``repeats`` runs after ``warmup``, repeated in rounds until the two lowest
    round medians agree within ``tolerance`` (at most ``rounds``); the lower one is returned
    (interference only ever adds time). With ``round_seconds``, a round has fewer runs when
    they would take longer (at least 5). :class:`~.targets.Runtime` holds a target's settings.
    """
    sess = make_session(path, threads=threads)
    feed = random_feed(input_shape, sess.get_inputs()[0].name)
    with MEASUREMENT_LOCK:
        t0 = time.perf_counter()
        for _ in range(warmup):
            sess.run(None, feed)
        if round_seconds is not None and warmup:
            per_run = (time.perf_counter() - t0) / warmup
            repeats = max(5, min(repeats, int(round_seconds / max(per_run, 1e-6))))
        medians: list[float] = []
        for _ in range(max(rounds, 1)):
            times = timeit.repeat(lambda: sess.run(None, feed), repeat=repeats, number=1)
            medians.append(statistics.median(times) * 1e3)
            if len(medians) > 1 and _spread(medians) <= tolerance:
                break
    return min(medians)


def _spread(values: list[float]) -> float:
    """Relative gap between the two lowest values (0 with fewer than two)."""
    low = sorted(values)[:2]
    return (low[1] - low[0]) / low[0] if len(low) == 2 else 0.0


def measure_passes(
    paths: list[Path],
    input_shape: tuple[int, ...],
    *,
    threads: int,
    passes: int = 3,
    span_seconds: float = 0.0,
    max_passes: int = 10,
    deadline: float | None = None,
    min_passes: int = 2,
    agree: float = 0.05,
    retries: int = 3,
    **timing,
) -> list[float]:
    """End-to-end milliseconds of several ONNX models, the minimum over passes (each model once
    per pass), so a burst of load spoils at most one of them. At least ``passes`` passes, and
    more (at most ``max_passes``, spaced evenly) until the first and the last are
    ``span_seconds`` apart: on a shared host another tenant's cache and memory traffic slows the
    larger models by up to 30 % for tens of seconds at a time, so passes taken within one
    minute can all land in one such phase. Models whose two best passes differ by more than
    ``agree`` are timed again (at most ``retries`` more passes); passes after ``min_passes``
    and retries do not start after ``deadline`` (``perf_counter``)."""
    times: list[list[float]] = [[] for _ in paths]
    most = max(max_passes, passes, 1)
    gap = span_seconds / max(most - 1, 1)

    def one_pass(which) -> None:
        for i in which:
            times[i].append(measure_onnx_latency(paths[i], input_shape, threads=threads, **timing))

    def late(at: float) -> bool:
        return deadline is not None and at > deadline

    start = time.perf_counter()
    for k in range(most):
        now = time.perf_counter()
        due = max(now, start + k * gap) if span_seconds else now
        if k >= passes and now - start >= span_seconds:
            break
        if k >= min_passes and late(due):
            break
        if deadline is not None:
            due = min(due, max(now, deadline))
        time.sleep(due - now)  # spread the passes over the span, not all in its first minute
        one_pass(range(len(paths)))
    for _ in range(retries):
        noisy = [i for i, t in enumerate(times) if _spread(t) > agree]
        if not noisy or late(time.perf_counter()):
            break
        one_pass(noisy)
    return [min(t) for t in times]


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
    """Latency per call and images/s at each batch size and thread count (``sample_shape``:
    one input without the batch dimension)."""
    timing = {"warmup": 3, "repeats": 30, "rounds": 5, "round_seconds": round_seconds}
    return [
        ThroughputPoint(b, t, measure_onnx_latency(path, (b, *sample_shape), threads=t, **timing))
        for t in dict.fromkeys(threads)
        for b in dict.fromkeys(batch_sizes)
    ]


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


def profile_onnx_nodes(
    path: str | Path, input_shape: tuple[int, ...], *, threads: int = 2, runs: int = 30
) -> list[NodeTime]:
    """Per-node median durations inside whole-model runs (ONNX Runtime's profiler), in
    execution order, after ``max(3, runs // 3)`` uncounted warm-up runs."""
    warmup = max(3, runs // 3)
    with tempfile.TemporaryDirectory() as tmp:
        sess = make_session(path, threads=threads, profile_prefix=str(Path(tmp) / "prof"))
        feed = random_feed(input_shape, sess.get_inputs()[0].name)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        durations[name].append(float(ev["dur"]))
        ops.setdefault(name, ev.get("args", {}).get("op_name", "?"))
    return [
        NodeTime(name, op, float(statistics.median(durations[name][warmup:] or durations[name])))
        for name, op in ops.items()
    ]


@dataclass(frozen=True)
class MemoryUse:
    """Megabytes (10^6 bytes) a model adds to a deployment process, and the raw readings."""

    steady_mb: float
    peak_mb: float
    process_steady_mb: float  # the whole process with the model
    process_peak_mb: float
    empty_steady_mb: float  # the whole process with the empty model
    empty_peak_mb: float


def empty_model(path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """An ONNX model with the same (batch-dynamic) float input and one ``Identity`` node."""
    import onnx
    from onnx import TensorProto, helper

    x, y = (
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *input_shape[1:]])
        for n in ("input", "logits")
    )
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])], "empty", [x], [y]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Path(path)


def _probe(path: Path, input_shape: tuple[int, ...], threads: int, runs: int) -> dict:
    cmd = [sys.executable, str(_PROBE), str(path), json.dumps(list(input_shape)), str(threads)]
    try:
        done = subprocess.run([*cmd, str(runs)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise AutocompressError(f"{path}: memory probe did not finish in 600 s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AutocompressError(f"{path}: memory probe failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(
    paths: list[str | Path],
    input_shape: tuple[int, ...],
    *,
    threads: int = 2,
    runs: int = 20,
    repeats: int = 3,
) -> list[MemoryUse]:
    """Steady and peak resident memory each ONNX model of ``paths`` adds to a fresh process
    (``threads``, 10 warm-up + ``runs`` inferences at ``input_shape``), net of the empty model;
    the median over ``repeats`` rounds of every model and the empty one."""
    with tempfile.TemporaryDirectory() as tmp, MEASUREMENT_LOCK:  # probes disturb timings
        empty = empty_model(Path(tmp) / "empty.onnx", input_shape)
        todo = [Path(p) for p in paths] + [empty]
        rounds = [[_probe(p, input_shape, threads, runs) for p in todo] for _ in range(repeats)]

    def med(i: int, key: str) -> float:
        return statistics.median(r[i][key] for r in rounds) * 1024 / 1e6

    e_steady, e_peak = med(len(paths), "steady_kib"), med(len(paths), "peak_kib")
    return [
        MemoryUse(max(s - e_steady, 0.0), max(p - e_peak, 0.0), s, p, e_steady, e_peak)
        for s, p in ((med(i, "steady_kib"), med(i, "peak_kib")) for i in range(len(paths)))
    ]
