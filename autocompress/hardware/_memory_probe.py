"""Run by :func:`autocompress.hardware.memory.measure_memory` as a script in a fresh interpreter
(not imported: it must not load torch or the autocompress package, so that the process holds
what a deployment holds: Python, NumPy, ONNX Runtime and the model).

    python _memory_probe.py MODEL.onnx '[1, 1, 28, 28]' THREADS RUNS

Creates the session as :func:`autocompress.hardware.measure.make_session` does (``THREADS``
intra-op threads, sequential, all graph optimisations), runs 10 warm-up + ``RUNS`` inferences on
seeded normal inputs and prints one JSON line: resident memory (KiB) before the session, after
the runs (steady) and the process peak (``VmHWM``; ``ru_maxrss`` where there is none).
"""

import json
import resource
import sys


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_kib() -> int:
    # VmHWM: the peak resident set of this process image. ``ru_maxrss`` is not used where
    # VmHWM exists: Linux carries it over fork + exec, so a child started by a large parent
    # (a training process) reports the parent's size.
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> None:
    import numpy as np
    import onnxruntime as ort

    path, shape, threads, runs = argv[0], json.loads(argv[1]), int(argv[2]), int(argv[3])
    feed_x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    before = _status_kib("VmRSS") or 0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: feed_x}
    for _ in range(10 + runs):
        sess.run(None, feed)
    steady = _status_kib("VmRSS") or 0
    peak = _peak_kib()
    print(json.dumps({"before_kib": before, "steady_kib": steady, "peak_kib": peak}))


if __name__ == "__main__":
    main(sys.argv[1:])
