import numpy as np
import optuna

from autocompress.samplers import LayerCorrelatedNSGAII

LAYERS = [f"l{i}" for i in range(6)]
BITS = [2, 3, 4, 8, 32]
SPARSITY = [0.0, 0.25, 0.5, 0.75]


def _run(sampler, n):
    def objective(trial):
        bits = [trial.suggest_categorical(f"{n}.bits", BITS) for n in LAYERS]
        sp = [trial.suggest_categorical(f"{n}.sparsity", SPARSITY) for n in LAYERS]
        return sum(bits), -sum(sp)

    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=n)
    return study.trials


def _spread(trial, dim, choices):
    idx = [sorted(choices).index(trial.params[f"{n}.{dim}"]) for n in LAYERS]
    return max(idx) - min(idx)


def test_first_generation_shares_one_level_per_dimension_across_layers():
    trials = _run(LayerCorrelatedNSGAII(population_size=20, seed=0, jitter=0.0), 20)
    assert all(_spread(t, "bits", BITS) == 0 for t in trials)
    assert all(_spread(t, "sparsity", SPARSITY) == 0 for t in trials)
    # the levels differ between trials and between dimensions (they are drawn, not fixed)
    assert len({t.params["l0.bits"] for t in trials}) >= 4
    assert len({(t.params["l0.bits"], t.params["l0.sparsity"]) for t in trials}) >= 8


def test_jitter_steps_single_layers_one_choice_away():
    trials = _run(LayerCorrelatedNSGAII(population_size=30, seed=1, jitter=0.3), 30)
    spreads = [_spread(t, "bits", BITS) for t in trials]
    assert max(spreads) <= 2 and any(s > 0 for s in spreads)
    # independent draws (plain NSGA-II's first generation) disagree across layers far more
    plain = _run(optuna.samplers.NSGAIISampler(population_size=30, seed=1), 30)
    assert np.mean(spreads) < np.mean([_spread(t, "bits", BITS) for t in plain]) - 1


def test_later_generations_evolve_and_the_seed_reproduces():
    a = _run(LayerCorrelatedNSGAII(population_size=8, seed=2), 32)
    b = _run(LayerCorrelatedNSGAII(population_size=8, seed=2), 32)
    assert [t.params for t in a] == [t.params for t in b]
    # children recombine first-generation parents: some layers disagree
    assert any(_spread(t, "bits", BITS) > 1 for t in a[8:])


def test_first_generation_draws_the_gentle_and_the_aggressive_end_on_every_seed():
    for seed in range(10):
        trials = _run(LayerCorrelatedNSGAII(population_size=12, seed=seed, jitter=0.0), 12)
        pairs = [(t.params["l0.bits"], t.params["l0.sparsity"]) for t in trials]
        # gentle: >= 8 bits and no sparsity; aggressive: <= 3 bits and >= 50 % sparsity
        assert any(b >= 8 and s == 0.0 for b, s in pairs), (seed, pairs)
        assert any(b <= 3 and s >= 0.5 for b, s in pairs), (seed, pairs)
        # and the dimensions still vary apart from each other (not one line through the space)
        assert len(set(pairs)) >= 6


def test_a_failed_trial_hands_its_stratum_to_its_replacement():
    sampler = LayerCorrelatedNSGAII(population_size=6, seed=0)

    def objective(trial):
        bits = [trial.suggest_categorical(f"{n}.bits", BITS) for n in LAYERS]
        if trial.number in (1, 3):
            raise ValueError("a policy that cannot be applied")
        return sum(bits), -trial.number

    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=8, catch=(ValueError,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6  # the first generation, complete
    assert sorted(t.system_attrs["LayerCorrelatedNSGAII:stratum"] for t in done) == list(range(6))


def test_a_re_run_of_a_failed_trial_keeps_its_stratum():
    # Its policy is re-run as it was (re-queued with ``requeued_from``, or copied with its
    # system attributes by Optuna's heartbeat retry): no fresh trial may take that stratum too.
    sampler = LayerCorrelatedNSGAII(population_size=6, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def objective(trial):
        bits = [trial.suggest_categorical(f"{n}.bits", BITS) for n in LAYERS]
        if trial.number == 1:
            study.enqueue_trial(trial.params, user_attrs={"requeued_from": 1})
            raise ValueError("the tracking server went away")
        if trial.number == 3:
            failed = study._storage.get_trial(trial._trial_id)
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.WAITING,
                    system_attrs=dict(failed.system_attrs) | {"failed_trial": 3},
                )
            )
            raise ValueError("the database went away")
        return sum(bits), -trial.number

    study.optimize(objective, n_trials=8, catch=(ValueError,))
    trials = study.trials
    key = "LayerCorrelatedNSGAII:stratum"
    (requeued,) = [t for t in trials if t.user_attrs.get("requeued_from") == 1]
    assert requeued.params == trials[1].params and key not in requeued.system_attrs
    (retried,) = [t for t in trials if t.system_attrs.get("failed_trial") == 3]
    assert retried.system_attrs[key] == trials[3].system_attrs[key]
    # every complete trial holds its own stratum: the re-queued one trial 1's
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    held = [t.system_attrs.get(key, trials[1].system_attrs[key]) for t in done]
    assert sorted(held) == list(range(6))
