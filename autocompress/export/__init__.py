"""Materialising a picked policy: packed artifact, ONNX, verification, pick from the front."""

from ..compression.artifact import load_packed_model, save_packed_model

__all__ = ["load_packed_model", "save_packed_model"]
