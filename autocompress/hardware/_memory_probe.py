"""The ONNX Runtime session every measurement uses, and the memory probe that
:func:`autocompress.hardware.measure.measure_memory` runs as a script in a fresh interpreter
(``python _memory_probe.py MODEL.onnx '[1, 1, 28, 28]' THREADS RUNS``): it imports neither torch
nor autocompress, so the process holds what a deployment holds (Python, NumPy, ONNX Runtime and
the model). It runs 10 warm-up + ``RUNS`` inferences on seeded normal inputs and prints one JSON
line: resident memory (KiB) before the session, after the runs (steady) and the process peak.
"""

import json
import resource
import sys


def make_session(path, *, threads: int = 2, profile_prefix: str | None = None):
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


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: list[str]) -> None:
    import numpy as np

    path, shape, threads, runs = argv[0], json.loads(argv[1]), int(argv[2]), int(argv[3])
    feed_x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    before = _status_kib("VmRSS") or 0
    sess = make_session(path, threads=threads)
    feed = {sess.get_inputs()[0].name: feed_x}
    for _ in range(10 + runs):
        sess.run(None, feed)
    steady = _status_kib("VmRSS") or 0
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec from a (large) parent
    peak = _status_kib("VmHWM")
    peak = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "steady_kib": steady, "peak_kib": peak}))


if __name__ == "__main__":
    main(sys.argv[1:])
