from __future__ import annotations

import json

import pytest

from autocompress.errors import ModelError
from autocompress.models import build_model
from autocompress.policy import CompressionPolicy, LayerPolicy


def test_json_round_trip():
    p = CompressionPolicy(
        {"conv1": LayerPolicy(0.5, 4), "conv2": LayerPolicy(0.0, 32), "fc": LayerPolicy(0.9, 2)}
    )
    q = CompressionPolicy.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p and hash(q) == hash(p)
    assert q["fc"].bits == 2 and q["conv1"].sparsity == 0.5
    assert list(q) == ["conv1", "conv2", "fc"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"sparsity": 1.0}, "sparsity must be"),
        ({"sparsity": -0.1}, "sparsity must be"),
        ({"bits": 1}, "bits must be"),
        ({"bits": 12}, "bits must be"),
        ({"threshold": -0.1}, "threshold must be"),
        ({"quantizer": "lloyd"}, "quantizer must be"),
        ({"scheme": "affine"}, "scheme must be"),
        ({"granularity": "per_group"}, "granularity must be"),
        ({"keep_ratio": 0.0}, "keep_ratio must be"),
    ],
)
def test_invalid_layer_policy(kw, match):
    with pytest.raises(ValueError, match=match):
        LayerPolicy(**kw)


def test_from_dict_rejects_bad_values():
    with pytest.raises(ValueError, match="invalid compression policy"):
        CompressionPolicy.from_dict({"layers": {"conv1": {"bits": 9}}})


def test_validate_against_model():
    model = build_model("tiny_cnn")
    CompressionPolicy({"conv1": LayerPolicy(0.5, 4)}).validate(model)
    with pytest.raises(ModelError, match="unknown layer.*conv9"):
        CompressionPolicy({"conv9": LayerPolicy(0.5, 4)}).validate(model)
    with pytest.raises(ModelError, match="bn1"):  # BatchNorm is not compressible
        CompressionPolicy({"bn1": LayerPolicy(0.5, 4)}).validate(model)


def test_options_without_effect_take_their_defaults():
    assert LayerPolicy(0.5, 32, quantizer="kmeans", scheme="asymmetric") == LayerPolicy(0.5, 32)
    assert LayerPolicy(0.0, 16, granularity="per_tensor") == LayerPolicy(0.0, 16)
    assert LayerPolicy(0.0, 4, quantizer="kmeans", scheme="asymmetric").scheme == "symmetric"
    assert LayerPolicy(0.0, 4, scheme="asymmetric").scheme == "asymmetric"
