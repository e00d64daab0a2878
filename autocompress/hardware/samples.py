"""Random policies of a search space, applied as a trial applies them: what latency and memory
validation (and the memory model's fit) measure."""

from __future__ import annotations

import random

from ..policy import CompressionPolicy, LayerPolicy
from ..search_space import SearchSpace

__all__ = ["random_compressed", "random_policy"]


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
    """A random policy of ``space`` applied to ``model`` as a trial applies it (channel
    removal, masks, quantisers, activation ranges calibrated): ``(policy, compressed)``; what
    ``latency validate`` and ``memory validate`` measure."""
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
