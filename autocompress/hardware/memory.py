"""Resident memory of a deployed ONNX model, measured on fresh processes (``_memory_probe.py``)
that run it, net of an *empty* model (one ``Identity`` node): ``steady_mb`` from the resident
set after the runs (``VmRSS``), ``peak_mb`` from the process peak (``VmHWM``: load, graph
optimisation and weight pre-packing included; ``tracemalloc`` misses ONNX Runtime's native
allocations). The median over ``repeats`` processes is kept.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import AutocompressError

_PROBE = Path(__file__).with_name("_memory_probe.py")


@dataclass(frozen=True)
class MemoryUse:
    """Megabytes (10^6 bytes) a model adds to a deployment process, and the raw readings."""

    steady_mb: float
    peak_mb: float
    process_steady_mb: float  # the whole process with the model
    process_peak_mb: float
    empty_steady_mb: float  # the whole process with the empty model
    empty_peak_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


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
    from .measure import measurement_lock

    with tempfile.TemporaryDirectory() as tmp, measurement_lock():  # probes disturb timings
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
