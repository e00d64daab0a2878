"""Optuna samplers by name (``search.sampler``): ``nsga2`` (default), ``tpe``, ``random``, any
registered with :func:`register_sampler`, or ``module:callable`` in YAML. A factory is called as
``factory(seed=, n_trials=, screen=, population_size=, constraints_func=)`` (``screen``: the
sampler of the screen's study, which sees hundreds of cheap trials) and returns a sampler.
Passing a sampler instance to :func:`autocompress.search` bypasses this.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

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


@register_sampler("nsga2")
def _nsga2(*, seed, n_trials, screen, population_size, constraints_func):
    # The screen's population is at most 24: a few hundred policies still run several generations.
    pop = population_size or max(4, min(24 if screen else 50, n_trials // 3))
    return optuna.samplers.NSGAIISampler(
        population_size=pop, seed=seed, constraints_func=constraints_func
    )


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
