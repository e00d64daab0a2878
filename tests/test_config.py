from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_config

from autocompress.cli import main
from autocompress.config import load_experiment
from autocompress.errors import ConfigError


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _valid(tmp_path: Path) -> dict:
    return {
        "name": "t",
        "model": {"name": "tiny_cnn"},
        "search_space": str(REPO / "search_spaces" / "tiny_cnn.yaml"),
        "output_dir": "out",
    }


def test_shipped_experiments_load():
    paths = sorted((REPO / "experiments").glob("*.yaml"))
    assert paths, "no shipped experiment files found"
    for path in paths:
        cfg = load_experiment(path)
        assert cfg.search_space.is_file()
        assert cfg.output_dir.is_absolute()


def test_relative_paths_resolve_against_the_file(tmp_path):
    cfg = load_experiment(_write(tmp_path, _valid(tmp_path)))
    assert cfg.output_dir == (tmp_path / "out").resolve()
    assert cfg.tracking.startswith("sqlite:///") and cfg.tracking.endswith("out/mlflow.db")


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda d: d.update(bogus=1), ["bogus", "unknown key", "allowed keys", "model"]),
        (lambda d: d["model"].update(nmae="x"), ["model.nmae", "unknown key", "num_classes"]),
        (lambda d: d.update(search={"sampler": "grid"}), ["search.sampler", "'grid'", "nsga2"]),
        (lambda d: d.update(search={"n_trials": "many"}), ["search.n_trials", "'many'"]),
        (lambda d: d.update(search={"n_trials": 0}), ["search.n_trials", "greater than"]),
        (lambda d: d.update(data={"val_fraction": 1.5}), ["data.val_fraction", "1.5"]),
        (lambda d: d["model"].update(name="vgg99"), ["model.name", "vgg99", "small_cnn"]),
        (lambda d: d.pop("model"), ["model", "required"]),
        (lambda d: d.update(search_space="nope.yaml"), ["search_space", "not found"]),
        (
            lambda d: d.update(objectives={"size": {"measure": "ram"}}),
            ["objectives.size.measure", "'ram'", "packed", "onnx"],
        ),
        (lambda d: d.update(export={"forms": ["int4"]}), ["export.forms", "'int4'", "fp16"]),
        (lambda d: d.update(export={"batch_sizes": [0]}), ["export.batch_sizes", "greater"]),
    ],
)
def test_bad_values_name_file_key_and_allowed(tmp_path, mutate, expect):
    data = _valid(tmp_path)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "\n" not in msg
    for part in expect:
        assert part in msg, (part, msg)


def test_yaml_syntax_error_names_line(tmp_path):
    path = _write(tmp_path, "name: t\nmodel: {name: tiny_cnn\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: line \d+ column \d+: YAML syntax error"):
        load_experiment(path)


def test_overrides(tmp_path):
    path = _write(tmp_path, _valid(tmp_path))
    cfg = load_experiment(path, ["search.n_trials=7", "search.sampler=tpe", "data.seed=3"])
    assert (cfg.search.n_trials, cfg.search.sampler, cfg.data.seed) == (7, "tpe", 3)
    with pytest.raises(ConfigError, match="search.bogus"):
        load_experiment(path, ["search.bogus=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_experiment(path, ["search.n_trials"])


def test_cli_config_error_is_one_line_exit_2(tmp_path, capsys):
    data = _valid(tmp_path)
    data["search"] = {"sampler": "grid"}
    rc = main(["validate", str(_write(tmp_path, data))])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err


def test_cli_validate_ok(tmp_path, fmnist_root, capsys):
    rc = main(["validate", str(tiny_config(tmp_path, fmnist_root))])
    out = capsys.readouterr().out
    assert rc == 0
    assert "conv1" in out and "fc" in out


def test_cli_missing_data_exit_1(tmp_path, capsys):
    path = tiny_config(tmp_path, tmp_path / "nowhere")
    rc = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "apt-get install dataset-fashion-mnist" in err and err.count("\n") == 1


def test_registered_model_name_validates(tmp_path):
    """A model registered after import (``register_model``) is a valid ``model.name``."""
    from autocompress.models import TinyCNN, register_model

    register_model("my_registered_cnn")(lambda num_classes=10, in_channels=1: TinyCNN())
    data = _valid(tmp_path)
    data["model"] = {"name": "my_registered_cnn"}
    assert load_experiment(_write(tmp_path, data)).model.name == "my_registered_cnn"


def test_module_callable_beside_the_experiment_file(tmp_path, monkeypatch):
    """``module:callable`` finds a module in the experiment file's folder (no PYTHONPATH), and
    a module that is nowhere says where it was looked for."""
    from autocompress.models import build_model

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "my_models_beside.py").write_text(
        "from autocompress.models import TinyCNN\n"
        "def make(num_classes=10):\n    return TinyCNN(num_classes)\n"
    )
    monkeypatch.chdir(tmp_path)  # not the experiment's folder
    data = _valid(folder)
    data["model"] = {"name": "my_models_beside:make"}
    cfg = load_experiment(_write(folder, data), check_files=False)
    assert build_model(cfg.model.name).fc.out_features == 10
    with pytest.raises(ConfigError) as info:
        build_model("no_such_module_anywhere:make")
    msg = str(info.value)
    assert "no_such_module_anywhere.py" in msg and str(folder) in msg and "PYTHONPATH" in msg
