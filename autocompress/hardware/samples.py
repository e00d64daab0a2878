"""Random policies of a search space, applied as a trial applies them, and the inputs they are
measured with: what latency and memory validation (and the memory model's fit) measure."""

from __future__ import annotations

import random

from ..policy import CompressionPolicy, LayerPolicy
from ..search_space import SearchSpace


def random_policy(space: SearchSpace, rng: random.Random) -> CompressionPolicy:
    """Each layer's sparsity, bits and keep ratio drawn uniformly from its choices."""
    return CompressionPolicy(
        {
            name: LayerPolicy(
                sparsity=rng.choice(ch.sparsity),
                bits=rng.choice(ch.bits),
                keep_ratio=rng.choice(ch.keep_ratio),
            )
            for name, ch in space.layers.items()
        }
    )


def random_compressed(cfg, model, space, example, calibration, rng: random.Random):
    """``(policy, compressed)``: a random policy applied as a trial applies it (channel removal,
    masks, quantisers, activation ranges calibrated on ``calibration``)."""
    from ..compression.apply import apply_policy, calibrate

    policy = random_policy(space, rng)
    compressed = apply_policy(
        model,
        policy,
        example=example,
        round_to=cfg.compression.round_to,
        importance=cfg.compression.importance,
    )
    calibrate(compressed, calibration)
    return policy, compressed


def measurement_inputs(prep, seed: int = 0):
    """``(runtime, example, calibration batches)`` of a prepared experiment; analytic and proxy
    targets are measured as this CPU's measured target times it."""
    from itertools import islice

    from ..training import batches
    from .targets import MeasuredTarget, Runtime, load_target

    cfg = prep.cfg
    target = load_target(cfg.latency.target)
    runtime = target.runtime if isinstance(target, MeasuredTarget) else Runtime()
    example = prep.data.example_input(cfg.latency.batch_size)
    calib = [x for x, _ in islice(batches(prep.data.train, 16, shuffle=True, seed=seed), 2)]
    return runtime, example, calib
