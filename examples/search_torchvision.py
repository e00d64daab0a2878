"""A torchvision model searched, picked, exported and compressed from Python, no experiment
file: the README's "Python API" snippet as a script (the test suite runs it; about a minute on
2 CPU cores). Random tensors stand in for your data sets: any ``Dataset`` of ``(input, label)``.

    python examples/search_torchvision.py      # writes runs/api-demo/ in the working folder
"""

import sys

# --- README: Python API ---
import torch, torchvision, autocompress as ac
from torch.utils.data import TensorDataset
model = torchvision.models.mobilenet_v3_small(num_classes=10)
x = torch.rand(300, 3, 32, 32); y = torch.randint(0, 10, (300,))
train, val, test = TensorDataset(x[:200], y[:200]), TensorDataset(x[200:250], y[200:250]), TensorDataset(x[250:], y[250:])
space = ac.SearchSpace.from_rules(model, [{"type": "Conv2d", "sparsity": [0.0, 0.5], "bits": [8, 32], "keep_ratio": [1.0, 0.5]}],
                                  example=x[:1])
result = ac.search(model, train=train, val=val, space=space, n_trials=4, output_dir="runs/api-demo", seed=0)
point = result.pick(knee=True)                 # a typed front point: .trial, .policy, .metrics
art = ac.export(result, point, test=test)      # typed: .onnx_path, .packed_path, .test_accuracy, .report_path
cm = ac.compress(model, point.policy, example=x[:1])   # typed: .model (nn.Module), .size_bytes(), .to_onnx(path)
# --- end ---

print(f"picked trial {point.trial}: {point.policy.summary()}")
print(f"val accuracy {point.metrics.val_accuracy:.3f}, {point.metrics.size_kb:.0f} KB packed")
print(f"exported {art.onnx_path} ({art.onnx_bytes} B), test accuracy {art.test_accuracy:.3f}")
print(f"report {art.report_path}; compressed module {type(cm.model).__name__}, {cm.size_bytes()} B")
sys.exit(0 if art.unpack_exact and art.onnx_path.is_file() else 1)
