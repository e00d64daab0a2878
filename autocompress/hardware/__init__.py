"""Hardware targets and what a deployed model costs on them: latency (measured on ONNX Runtime,
profiled tables, analytic targets), the deployed ONNX forms, file bytes, memory and throughput."""
