"""Hardware targets: measured latency (ONNX Runtime) and latency models used by the search."""

from .latency import LatencyModel, ProxyLatencyModel, count_macs, make_latency_model
from .measure import export_onnx, measure_onnx_latency, measure_torch_model_latency

__all__ = [
    "LatencyModel",
    "ProxyLatencyModel",
    "count_macs",
    "export_onnx",
    "make_latency_model",
    "measure_onnx_latency",
    "measure_torch_model_latency",
]
