"""Materialising a picked policy: packed artifact, ONNX, verification, pick from the front."""
