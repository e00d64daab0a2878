"""Resident memory of a deployed ONNX model, measured on a process.

A fresh interpreter (``_memory_probe.py``: Python, NumPy and ONNX Runtime only, no torch) creates
the ONNX Runtime session with the target's threads and runs warm-up + timed inferences; the same
is done with an *empty* model (one ``Identity`` node on the same input), and the model's memory
is the difference:

- ``steady_mb``: resident set (``VmRSS``) after the runs, minus the empty model's;
- ``peak_mb``: the process peak (``VmHWM``, the peak resident set of the process image: load,
  graph optimisation and weight pre-packing transients included), minus the empty model's.
  ``ru_maxrss`` is not used on Linux: it is carried over fork + exec from the parent, so a probe
  started by a training process would report the trainer's size.

``tracemalloc`` would not see ONNX Runtime's native allocations; the peak is usually well above
the steady value. Each process is run ``repeats`` times and the median kept.
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

__all__ = ["MemoryUse", "empty_model", "measure_memory"]

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

    dims: list = ["batch", *input_shape[1:]]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])], "empty", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = Path(path)
    onnx.save(model, str(path))
    return path


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
    """Steady and peak resident memory each ONNX model of ``paths`` adds to a fresh process that
    creates its session (``threads``) and runs 10 warm-up + ``runs`` inferences at
    ``input_shape``, net of the empty model; median over ``repeats`` rounds (every model and
    the empty one once per round)."""
    from .measure import measurement_lock

    with tempfile.TemporaryDirectory() as tmp, measurement_lock():
        # (the lock: probes would disturb a timing run of another process, and be disturbed)
        empty = empty_model(Path(tmp) / "empty.onnx", input_shape)
        todo = [Path(p) for p in paths] + [empty]
        rounds = [[_probe(p, input_shape, threads, runs) for p in todo] for _ in range(repeats)]

    def med(i: int, key: str) -> float:
        return statistics.median(r[i][key] for r in rounds) * 1024 / 1e6

    e_steady, e_peak = med(len(paths), "steady_kib"), med(len(paths), "peak_kib")
    out = []
    for i in range(len(paths)):
        steady, peak = med(i, "steady_kib"), med(i, "peak_kib")
        out.append(
            MemoryUse(
                steady_mb=max(steady - e_steady, 0.0),
                peak_mb=max(peak - e_peak, 0.0),
                process_steady_mb=steady,
                process_peak_mb=peak,
                empty_steady_mb=e_steady,
                empty_peak_mb=e_peak,
            )
        )
    return out
