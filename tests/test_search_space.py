from __future__ import annotations

import pytest
import yaml

from autocompress.errors import ConfigError
from autocompress.models import build_model
from autocompress.search_space import load_search_space


def _space(tmp_path, data):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_search_space(p)


def test_exact_glob_type_first_match_wins(tmp_path):
    spec = _space(
        tmp_path,
        {
            "layers": [
                {"name": "conv1", "sparsity": [0.0], "bits": [8]},
                {
                    "type": "Conv2d",
                    "sparsity": {"low": 0.0, "high": 0.5, "step": 0.25},
                    "bits": [4],
                },
                {"name": "f*", "bits": [2, 32]},
            ]
        },
    )
    space = spec.resolve(build_model("tiny_cnn"))
    assert list(space.layers) == ["conv1", "conv2", "fc"]
    assert space.layers["conv1"].bits == (8,)
    assert space.layers["conv2"].sparsity == (0.0, 0.25, 0.5)
    assert space.layers["fc"].bits == (2, 32) and space.layers["fc"].sparsity == (0.0,)
    assert space.cardinality == 1 * 3 * 2


def test_exclude(tmp_path):
    spec = _space(tmp_path, {"layers": [{"type": "Conv2d"}], "exclude": ["conv1"]})
    assert list(spec.resolve(build_model("tiny_cnn")).layers) == ["conv2"]


def test_pattern_matching_nothing_is_an_error(tmp_path):
    spec = _space(tmp_path, {"layers": [{"name": "encoder.*", "bits": [4]}]})
    with pytest.raises(ConfigError, match=r"layers.0: name 'encoder.\*' matches no .*conv1"):
        spec.resolve(build_model("tiny_cnn"))


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"name": "x", "bits": [9]}, "bits"),
        ({"name": "x", "sparsity": [1.0]}, "sparsity"),
        ({"bits": [4]}, "exactly one of"),
        ({"name": "x", "type": "Conv2d"}, "exactly one of"),
        ({"name": "x", "colour": "red"}, "unknown key"),
    ],
)
def test_bad_rules(tmp_path, rule, needle):
    with pytest.raises(ConfigError, match=needle):
        _space(tmp_path, {"layers": [rule]})


def test_params_round_trip(tmp_path):
    spec = _space(
        tmp_path, {"layers": [{"type": "Conv2d", "sparsity": [0.0, 0.5], "bits": [4, 8]}]}
    )
    space = spec.resolve(build_model("tiny_cnn"))
    params = {"conv1.sparsity": 0.5, "conv1.bits": 4, "conv2.sparsity": 0.0, "conv2.bits": 8}
    policy = space.policy_from_params(params)
    assert policy["conv1"].bits == 4 and policy["conv2"].sparsity == 0.0
    assert space.params_from_policy(policy) == params


def test_channel_removal_is_offered_only_where_the_model_allows_it():
    import torch
    from torch import nn

    from autocompress.search_space import SearchSpace

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    rules = [{"type": "Conv2d", "sparsity": [0.0, 0.5], "keep_ratio": [1.0, 0.5]}]
    space = SearchSpace.from_rules(model, rules, example=torch.zeros(1, 3, 8, 8))
    assert space.unprunable == ("2",)  # the last conv's channels are the model's outputs
    assert space.layers["0"].keep_ratio == (1.0, 0.5)
    assert space.layers["2"].keep_ratio == (1.0,)
    assert "2.keep_ratio" not in space.choices()
    without = SearchSpace.from_rules(model, rules)  # no example: nothing checked
    assert without.unprunable == () and without.layers["2"].keep_ratio == (1.0, 0.5)
