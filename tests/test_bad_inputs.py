"""A corpus of malformed inputs: each gives one clear line naming the problem, exit code 2
(configuration or usage) or 1 (runtime), and no traceback."""

from __future__ import annotations

import gzip
import importlib
import shutil

import pytest
import torch
import yaml
from conftest import tiny_config

from autocompress.cli import main
from autocompress.errors import DataError


def _edit(path, fn):
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))
    return path


def _space(tmp, rule) -> str:
    p = tmp / "space.yaml"
    p.write_text(yaml.safe_dump({"layers": [rule]}))
    return str(p)


def _corrupt_data(tmp, root):
    bad = tmp / "bad-data"
    shutil.copytree(root, bad)
    with gzip.open(bad / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + (1500).to_bytes(4, "big") + b"\x00" * 100)
    return str(bad)


def _wrong_checkpoint(tmp):
    p = tmp / "wrong.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), p)
    return str(p)


def _garbage_checkpoint(tmp):
    p = tmp / "garbage.pt"
    p.write_bytes(b"this is not a checkpoint")
    return str(p)


def _raising_model(**_):
    raise RuntimeError("my model is broken")


def _wrong_input_model(**_):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 10))


def _three_class_model(**_):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))


# (id, command, how to break the tiny experiment, expected exit code, words in the message)
CASES = [
    ("yaml-syntax", "validate", lambda p, t, r: p.write_text("name: x\nmodel: {name: a\n"), 2,
     ["YAML syntax error", "line"]),
    ("not-a-mapping", "validate", lambda p, t, r: p.write_text("- a\n- b\n"), 2,
     ["mapping"]),
    ("unknown-key", "validate", lambda p, t, r: _edit(p, lambda d: d.update(colour="red")), 2,
     ["colour", "unknown key", "allowed keys"]),
    ("wrong-type", "validate",
     lambda p, t, r: _edit(p, lambda d: d["search"].update(n_trials="many")), 2,
     ["search.n_trials", "'many'"]),
    ("bad-sampler", "validate",
     lambda p, t, r: _edit(p, lambda d: d["search"].update(sampler="grid")), 2,
     ["search.sampler", "nsga2"]),
    ("val-fraction", "validate",
     lambda p, t, r: _edit(p, lambda d: d["data"].update(val_fraction=-0.5)), 2,
     ["data.val_fraction"]),
    ("sparsity-range", "validate",
     lambda p, t, r: _edit(p, lambda d: d.update(
         search_space=_space(t, {"type": "Conv2d", "sparsity": [0.5, 1.2]}))), 2,
     ["sparsity", "1.2"]),
    ("bits-range", "validate",
     lambda p, t, r: _edit(p, lambda d: d.update(
         search_space=_space(t, {"type": "Conv2d", "bits": [4, 12]}))), 2,
     ["bits", "12"]),
    ("pattern-matches-nothing", "validate",
     lambda p, t, r: _edit(p, lambda d: d.update(
         search_space=_space(t, {"name": "encoder.*", "bits": [4]}))), 2,
     ["encoder.*", "matches no"]),
    ("missing-space-file", "validate",
     lambda p, t, r: _edit(p, lambda d: d.update(search_space="nowhere.yaml")), 2,
     ["search_space", "not found"]),
    ("unknown-model", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(name="vgg99")), 2,
     ["model.name", "vgg99"]),
    ("unimportable-callable", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(name="no_such_module:make")), 2,
     ["cannot import", "no_such_module"]),
    ("missing-attribute", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(name="test_bad_inputs:nothing")), 2,
     ["has no attribute", "nothing"]),
    ("model-raises", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(name="test_bad_inputs:_raising_model")),
     1, ["my model is broken"]),
    ("model-cannot-take-input", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(
         name="test_bad_inputs:_wrong_input_model")), 1,
     ["cannot take the data's input", "(8, 1, 28, 28)", "model.kwargs"]),
    ("model-output-shape", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(
         name="test_bad_inputs:_three_class_model")), 1,
     ["returns (8, 3)", "model.num_classes: 10"]),
    ("too-few-classes", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(num_classes=5)), 2,
     ["model.num_classes is 5", "10 classes"]),
    ("checkpoint-mismatch", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(checkpoint=_wrong_checkpoint(t))), 1,
     ["does not fit"]),
    ("checkpoint-garbage", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(checkpoint=_garbage_checkpoint(t))), 1,
     ["cannot load checkpoint"]),
    ("missing-checkpoint", "validate",
     lambda p, t, r: _edit(p, lambda d: d["model"].update(checkpoint="gone.pt")), 2,
     ["model.checkpoint", "not found"]),
    ("missing-data", "validate",
     lambda p, t, r: _edit(p, lambda d: d["data"].update(root=str(t / "no-data"))), 1,
     ["apt-get install dataset-fashion-mnist"]),
    ("corrupt-idx", "search",
     lambda p, t, r: _edit(p, lambda d: d["data"].update(root=_corrupt_data(t, r))), 1,
     ["corrupt IDX", "train-images"]),
    ("unknown-latency-target", "validate",
     lambda p, t, r: _edit(p, lambda d: d.update(latency={"target": "tpu-v9"})), 2,
     ["latency.target", "tpu-v9"]),
    ("unreachable-storage", "search",
     lambda p, t, r: _edit(p, lambda d: d.update(
         storage="postgresql://alice:s3cret@127.0.0.1:1/db")), 1,
     ["storage", "alice:***@"]),
    ("unreachable-tracking", "search",
     lambda p, t, r: _edit(p, lambda d: d.update(tracking_uri="http://127.0.0.1:1")), 1,
     ["tracking server", "not reachable"]),
    ("workers-on-sqlite", "search --workers 2", lambda p, t, r: p, 2,
     ["--workers needs a storage"]),
    ("bad-set", "validate --set search.n_trials", lambda p, t, r: p, 2, ["key=value"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "breaker", "code", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input(tmp_path, fmnist_root, capsys, command, breaker, code, words):
    path = tiny_config(tmp_path, fmnist_root)
    breaker(path, tmp_path, fmnist_root)
    verb, *extra = command.split()
    rc = main([verb, str(path), *extra])
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "s3cret" not in err
    assert words  # a case without words would check no message at all
    for word in words:
        assert word in err, (word, err)


def test_missing_experiment_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search"])
    assert info.value.code == 2


def test_debug_shows_traceback(tmp_path, fmnist_root, capsys):
    """With --debug the error propagates (Python prints its traceback) instead of being turned
    into the one ``error:`` line."""
    path = tiny_config(tmp_path, fmnist_root)
    _edit(path, lambda d: d["data"].update(root=str(tmp_path / "no-data")))
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        main(["--debug", "validate", str(path)])
    assert "error: " not in capsys.readouterr().err


def test_corpus_is_large_enough_and_well_formed():
    ids = [c[0] for c in CASES]
    assert len(CASES) >= 15 and len(set(ids)) == len(ids), ids
    for case_id, _, _, code, words in CASES:
        assert code in (1, 2) and words, case_id
    # the cases name model callables as test_bad_inputs:...; they must import under that name,
    # and the missing-attribute case needs `nothing` to stay undefined
    mod = importlib.import_module("test_bad_inputs")
    for name in ("_raising_model", "_wrong_input_model", "_three_class_model"):
        assert callable(getattr(mod, name, None)), name
    assert not hasattr(mod, "nothing")
