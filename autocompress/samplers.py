"""Optuna samplers by name (``search.sampler``): ``nsga2`` (default), ``tpe``, ``random``, any
registered with :func:`register_sampler`, or ``module:callable`` in YAML. A factory is called as
``factory(seed=, n_trials=, screen=, population_size=, constraints_func=)`` (``screen``: the
sampler of the screen's study, which sees hundreds of cheap trials) and returns a sampler.
Passing a sampler instance to :func:`autocompress.search` bypasses this.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from .errors import ConfigError

SamplerFactory = Callable[..., optuna.samplers.BaseSampler]
_REGISTRY: dict[str, SamplerFactory] = {}


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Decorator adding a sampler factory under ``name``."""

    def deco(fn: SamplerFactory) -> SamplerFactory:
        _REGISTRY[name] = fn
        return fn

    return deco


def sampler_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def make_sampler(name: str, **kw) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` (a registered name or ``module:callable``) built with ``kw``."""
    if name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        from .models import load_callable

        factory = load_callable(name, what="search.sampler")
    sampler = factory(**kw)
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(
            f"search.sampler: {name!r} returned {type(sampler).__name__}, not an Optuna sampler"
        )
    return sampler


_STRATUM = "LayerCorrelatedNSGAII:stratum"
# The gentle end of an ordered dimension: its highest choice (True) or its lowest (False).
_GENTLE_HIGH = {"bits": True, "keep_ratio": True, "sparsity": False, "threshold": False}


def _stratum(trials: list, trial) -> int | None:
    """The first-generation stratum ``trial`` holds: its own, or (a re-run with fixed
    parameters never samples) the one of the failed trial it re-runs."""
    for _ in range(len(trials)):
        if (k := trial.system_attrs.get(_STRATUM)) is not None:
            return k
        source = trial.user_attrs.get("requeued_from", trial.system_attrs.get("failed_trial"))
        if source is None or not 0 <= source < len(trials):
            return None
        trial = trials[source]
    return None


class LayerCorrelatedNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II whose first generation comes from a prior correlated across layers: per trial,
    one level in [0, 1) per dimension (``<layer>.bits``, ``<layer>.sparsity``, ...) shared by
    every layer, each layer taking the choice at that quantile of its own sorted choices and
    stepping one choice up or down with probability ``jitter``. Independent per-parameter
    draws make a policy whose layers disagree (one at 2 bits, one in float); one-line configs
    are strong trade-offs, and this prior draws them and their near neighbours most, for
    crossover and mutation (as in :class:`~optuna.samplers.NSGAIISampler`) to refine.

    The levels are stratified along one gentle-to-aggressive axis: the first generation's
    trial ``k`` (of ``population_size``) has an intensity in the ``k``-th of ``population_size``
    equal strata (in a random order), and each ordered dimension's level is that intensity
    (from its gentle end: most bits, most channels kept, least sparsity) plus a uniform offset
    of at most ``spread``; unordered dimensions draw their level uniformly. Independent
    uniform levels can miss a whole corner of the front in one generation (on the small CNN,
    no policy with >= 5 bits and <= 10 % sparsity in 88 screened on one seed); strata draw
    both ends every time."""

    def __init__(
        self, *, jitter: float = 0.25, spread: float = 0.15, seed: int | None = None, **kw
    ) -> None:
        super().__init__(seed=seed, **kw)
        self._jitter, self._spread = jitter, spread
        self._prior = np.random.default_rng(seed)
        self._strata = self._prior.permutation(self.population_size)
        self._levels: dict[int, dict[str, float] | None] = {}  # trial id -> levels (gen 0)
        self._intensity: dict[int, float] = {}

    def sample_relative(self, study, trial, search_space):
        params = super().sample_relative(study, trial, search_space)
        generation = self.get_trial_generation(study, trial)
        first = not self.get_parent_population(study, generation)
        self._levels[trial._trial_id] = {} if first else None
        if first:
            k = self._free_stratum(study, trial)
            n = len(self._strata)
            self._intensity[trial._trial_id] = (self._strata[k] + self._prior.random()) / n
        return params

    def _free_stratum(self, study, trial) -> int:
        """The first stratum no complete, running or queued first-generation trial holds (a failed
        trial's goes to its replacement), recorded on the trial (workers share the storage).
        A re-run of a failed trial (its parameters re-queued with ``requeued_from``, or Optuna's
        heartbeat retry, which copies its system attributes) holds that trial's stratum."""
        trials = study.get_trials(False)
        k = _stratum(trials, trial)
        if k is None:
            live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
            held = {
                _stratum(trials, t) for t in trials if t.state in live and t.number != trial.number
            }
            n = len(self._strata)
            k = next((i for i in range(n) if i not in held), trial.number % n)
        study._storage.set_trial_system_attr(trial._trial_id, _STRATUM, k)
        return k

    def _level(self, trial_id: int, dim: str) -> float:
        if dim not in _GENTLE_HIGH:
            return float(self._prior.random())
        offset = self._spread * (2 * self._prior.random() - 1)
        a = min(max(self._intensity[trial_id] + offset, 0.0), np.nextafter(1.0, 0.0))
        return 1.0 - a if _GENTLE_HIGH[dim] else a

    def sample_independent(self, study, trial, param_name, param_distribution):
        levels = self._levels.get(trial._trial_id)
        if levels is None or not isinstance(param_distribution, CategoricalDistribution):
            return super().sample_independent(study, trial, param_name, param_distribution)
        choices = list(param_distribution.choices)
        if all(isinstance(c, int | float) for c in choices):
            choices.sort()
        dim = param_name.rpartition(".")[2]
        if dim not in levels:
            levels[dim] = self._level(trial._trial_id, dim)
        i = min(int(levels[dim] * len(choices)), len(choices) - 1)
        if self._prior.random() < self._jitter:
            i = min(max(i + int(self._prior.choice((-1, 1))), 0), len(choices) - 1)
        return choices[i]

    def reseed_rng(self) -> None:
        super().reseed_rng()
        self._prior = np.random.default_rng()

    def after_trial(self, study, trial, state, values) -> None:
        self._levels.pop(trial._trial_id, None)
        self._intensity.pop(trial._trial_id, None)
        super().after_trial(study, trial, state, values)


@register_sampler("nsga2")
def _nsga2(*, seed, n_trials, screen, population_size, constraints_func):
    # The screen's population is at most 24: a few hundred policies still run several generations.
    # The screen's first generation is layer-correlated; the fine-tuned study (only sampled
    # without a screen, or when the screen left too few distinct policies) keeps independent
    # draws, which rarely repeat a policy already fine-tuned.
    pop = population_size or max(4, min(24 if screen else 50, n_trials // 3))
    cls = LayerCorrelatedNSGAII if screen else optuna.samplers.NSGAIISampler
    return cls(population_size=pop, seed=seed, constraints_func=constraints_func)


@register_sampler("tpe")
def _tpe(*, seed, n_trials, screen, population_size, constraints_func):
    return optuna.samplers.TPESampler(
        multivariate=True,
        n_startup_trials=min(10, n_trials // 3 + 1),
        seed=seed,
        constraints_func=constraints_func,
    )


@register_sampler("random")
def _random(*, seed, n_trials, screen, population_size, constraints_func):
    return optuna.samplers.RandomSampler(seed=seed)
