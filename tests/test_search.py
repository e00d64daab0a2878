from __future__ import annotations

import json

import mlflow
import numpy as np
from conftest import tiny_config
from optuna.trial import TrialState

from autocompress import load_experiment, search
from autocompress.cli import main
from autocompress.search.pareto import to_minimization
from autocompress.search.study import load_study
from autocompress.search_space import load_search_space


def _runs(cfg):
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking)
    exp = client.get_experiment_by_name(cfg.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("autocompress.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("autocompress.role") == "trial"]
    return client, parents, trials


def test_end_to_end_search_logs_trials_and_front(tmp_path, fmnist_root):
    cfg = load_experiment(tiny_config(tmp_path, fmnist_root))
    result = search(cfg, log=lambda *_: None)
    assert result.n_complete == 3

    client, parents, trials = _runs(cfg)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.metrics["baseline_val_accuracy"] > 0.2
    assert len(trials) == 3
    space = load_search_space(cfg.search_space)
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        for layer in ("conv1", "conv2", "fc"):
            assert f"{layer}.sparsity" in run.data.params and f"{layer}.bits" in run.data.params
        for m in ("val_accuracy", "latency_ms", "size_kb", "compression_ratio"):
            assert m in run.data.metrics
    assert space.layers  # the space file itself parsed

    names = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    for suffix in ("csv", "json", "html", "png"):
        assert f"pareto/pareto_front.{suffix}" in names

    # the logged front is non-dominated and contains exactly the runs tagged pareto=true
    local = client.download_artifacts(parent.info.run_id, "pareto/pareto_front.json", str(tmp_path))
    front = json.loads(open(local).read())["front"]
    all_vals = np.array(
        [
            [
                r.data.metrics["val_accuracy"],
                r.data.metrics["latency_ms"],
                r.data.metrics["size_kb"],
            ]
            for r in trials
        ]
    )
    dirs = ["maximize", "minimize", "minimize"]
    allm = to_minimization(all_vals, dirs)
    for row in front:
        p = to_minimization(
            np.array([[row["val_accuracy"], row["latency_ms"], row["size_kb"]]]), dirs
        )[0]
        dominated = np.any(np.all(allm <= p, axis=1) & np.any(allm < p, axis=1))
        assert not dominated
    tagged = {r.data.tags["trial_number"] for r in trials if r.data.tags.get("pareto") == "true"}
    assert tagged == {str(r["trial"]) for r in front}


def test_resume_reaches_total_and_does_not_redo(tmp_path, fmnist_root):
    path = tiny_config(tmp_path, fmnist_root, search__n_trials=2)
    search(load_experiment(path), log=lambda *_: None)
    cfg = load_experiment(path, ["search.n_trials=4"])
    search(cfg, log=lambda *_: None)
    info = load_study(cfg)
    complete = info.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    assert sorted(t.number for t in complete) == [0, 1, 2, 3]
    _, parents, trials = _runs(cfg)
    assert len(parents) == 1 and len(trials) == 4
    # and a third run with the same total runs nothing more
    search(cfg, log=lambda *_: None)
    assert len(load_study(cfg).study.trials) == 4


def test_failing_trial_is_recorded_and_search_goes_on(tmp_path, fmnist_root, monkeypatch):
    from autocompress.search import trials as objective

    calls = {"n": 0}
    original = objective.TrialEvaluator.__call__

    def flaky(self, policy, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in trial")
        return original(self, policy, **kw)

    monkeypatch.setattr(objective.TrialEvaluator, "__call__", flaky)
    cfg = load_experiment(tiny_config(tmp_path, fmnist_root))
    result = search(cfg, log=lambda *_: None)
    assert result.n_complete == 3 and result.n_failed == 1
    _, _, trials = _runs(cfg)
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert len(failed) == 1 and "boom in trial" in failed[0].data.tags["fail_reason"]


def test_a_policy_already_fine_tuned_is_not_fine_tuned_again(tmp_path, fmnist_root, monkeypatch):
    import optuna

    from autocompress.search import trials as objective

    calls = {"n": 0}
    original = objective.TrialEvaluator.__call__

    def counted(self, policy, **kw):
        calls["n"] += 1
        return original(self, policy, **kw)

    monkeypatch.setattr(objective.TrialEvaluator, "__call__", counted)
    cfg = load_experiment(
        tiny_config(tmp_path, fmnist_root, search__n_trials=3, search__screen_trials=0)
    )

    class Repeats(optuna.samplers.RandomSampler):  # only ever the anchor's (trial 0) policy
        def sample_independent(self, study, trial, name, distribution):
            return study.trials[0].params[name]

    lines: list[str] = []
    result = search(cfg, sampler=Repeats(), log=lines.append)
    assert calls["n"] == 1 and result.n_complete == 1  # the anchor only
    study = load_study(cfg).study
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) == 20 and all(t.user_attrs["duplicate_of"] == 0 for t in pruned)
    assert any("policies in a row were already tried" in line for line in lines)
    _, _, trials = _runs(cfg)
    assert len(trials) == 1  # no MLflow run for a policy not fine-tuned


def test_cli_search_and_status(tmp_path, fmnist_root, capsys):
    path = tiny_config(tmp_path, fmnist_root, search__n_trials=2, search__sampler="random")
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[trial   1 | 2/2 done]" in out and "Pareto front" in out
    assert main(["status", str(path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["complete"] == 2 and status["failed"] == 0 and status["front"]


def test_trial_fine_tune_starts_from_corrected_batchnorm(tmp_path, fmnist_root, monkeypatch):
    """With ``finetune.correct_batchnorm`` the compressed model's BatchNorm statistics follow
    the shift compression causes (closer to its real activations on unseen training batches
    than the trained statistics); without it they stay the trained ones."""
    import torch

    from autocompress.baseline import prepare
    from autocompress.search.trials import TrialEvaluator
    from autocompress.training import batches

    cfg = load_experiment(tiny_config(tmp_path, fmnist_root, finetune__steps=0))
    prep = prepare(cfg, log=lambda *_: None)
    evaluator = TrialEvaluator(cfg, prep.baseline, prep.data, None)
    policy = prep.space.uniform_policy(0.8, 2)
    # the statistics themselves, before compress() folds them into the affine parameters
    import sys

    monkeypatch.setattr(
        sys.modules["autocompress.search.trials"], "fold_statistics", lambda m, *_: m
    )
    held_out = [
        x for i, (x, _) in enumerate(batches(prep.data.train, 64, shuffle=True, seed=7)) if i < 3
    ]

    def gap(model) -> float:
        seen = []
        hook = model.bn2.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
        with torch.no_grad():
            model.eval()(torch.cat(held_out))
        hook.remove()
        actual = seen[0].mean(dim=(0, 2, 3))
        return float((model.bn2.running_mean - actual).abs().mean())

    plain_cfg = cfg.model_copy(deep=True)
    plain_cfg.finetune.correct_batchnorm = False
    plain, _ = TrialEvaluator(plain_cfg, prep.baseline, prep.data, None).compress(policy)
    corrected, _ = evaluator.compress(policy)
    base_bn = prep.baseline.model.bn2
    assert torch.equal(plain.bn2.running_mean, base_bn.running_mean)
    assert not torch.equal(corrected.bn2.running_mean, base_bn.running_mean)
    assert gap(corrected) < gap(plain)


def test_gradual_schedule_reaches_the_policy_in_steps(tmp_path, fmnist_root, monkeypatch):
    """``finetune.schedule: gradual``: the fine-tune is split over the pruning steps, the
    sparsity rises along the cubic schedule, recovery stages run at the reduced rate, and
    the model ends at exactly the policy's sparsity."""
    from autocompress.baseline import prepare
    from autocompress.compression.apply import weight_sparsity
    from autocompress.search import trials as objective

    cfg = load_experiment(tiny_config(tmp_path, fmnist_root, finetune__steps=7))
    cfg.finetune.schedule, cfg.finetune.prune_stages = "gradual", 3
    prep = prepare(cfg, log=lambda *_: None)
    calls = []
    real_train = objective.train

    def spy(model, ds, *, steps, lr, **kw):
        calls.append((steps, lr, round(weight_sparsity(model), 3)))
        return real_train(model, ds, steps=steps, lr=lr, **kw)

    monkeypatch.setattr(objective, "train", spy)
    policy = prep.space.uniform_policy(0.75, 32)
    model, _ = objective.TrialEvaluator(cfg, prep.baseline, prep.data, None).compress(policy)
    lr = cfg.finetune.lr
    assert [(c[0], c[1]) for c in calls] == [(2, lr * 0.1), (2, lr * 0.1), (3, lr)]
    sparsities = [c[2] for c in calls]
    assert sparsities[0] < sparsities[1] < sparsities[2]
    one = objective.TrialEvaluator(cfg, prep.baseline, prep.data, None)
    cfg.finetune.schedule = "oneshot"
    oneshot, _ = one.compress(policy)
    assert abs(weight_sparsity(model) - weight_sparsity(oneshot)) < 1e-6


def test_kept_trial_models_reload_bit_for_bit(tmp_path, fmnist_root):
    """``search.keep_models``: each fine-tuned trial's packed file rebuilds the model it scored
    (same validation accuracy), and its size is the size the search recorded."""
    from autocompress.compression.artifact import load_packed_model
    from autocompress.data import load_data
    from autocompress.training import evaluate

    path = tiny_config(tmp_path, fmnist_root, search__n_trials=2, search__keep_models=True)
    cfg = load_experiment(path)
    search(cfg, log=lambda *_: None)
    data = load_data(cfg.data)
    trials = load_study(cfg).study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        file = cfg.output_dir / "models" / f"trial-{t.number:03d}.acpk"
        model, _ = load_packed_model(file)
        acc, _ = evaluate(model, data.val)
        assert acc == t.user_attrs["metrics"]["val_accuracy"]
        assert file.stat().st_size == t.user_attrs["metrics"]["size_bytes"]


def test_onnx_size_objective_is_the_deployed_file(tmp_path, fmnist_root):
    """``objectives.size.measure: onnx``: sizes are deployed ONNX files' bytes: the baseline's
    is its FP32 export byte for byte, the anchor trial's its INT8 QDQ file's (up to a byte per
    activation zero point, which calibration decides)."""
    import torch

    from autocompress.baseline import prepare
    from autocompress.compression.apply import apply_policy
    from autocompress.hardware.deploy import deployed_onnx_bytes
    from autocompress.hardware.measure import export_onnx

    cfg = load_experiment(
        tiny_config(tmp_path, fmnist_root, search__n_trials=2, objectives__size={"measure": "onnx"})
    )
    result = search(cfg, log=lambda *_: None)
    assert result.n_complete == 2
    prep = prepare(cfg, log=lambda *_: None)
    x = torch.zeros(1, 1, 28, 28)
    fp32 = export_onnx(prep.baseline.model, x, tmp_path / "b.onnx").stat().st_size
    assert prep.baseline.metrics.size_bytes == fp32
    _, _, trials = _runs(cfg)
    (anchor,) = [r for r in trials if r.data.tags.get("origin") == "anchor"]
    policy = prep.space.policy_from_params(prep.space.extreme(aggressive=False))
    model = apply_policy(prep.baseline.model, policy, example=x)
    want = deployed_onnx_bytes(model, x)
    assert abs(anchor.data.metrics["size_kb"] * 1024 - want) <= 8
