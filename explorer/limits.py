"""Limits an operator sets through the environment (sizes in megabytes), read when used."""

from __future__ import annotations

import os

#: Stage inputs the incremental evaluator keeps per model, so that a change resumes after the
#: first changed layer instead of running the whole model. Beyond the budget, fewer stage
#: boundaries are kept (a change then recomputes a little more); nothing fails.
ACTIVATION_CACHE_ENV = "PRUNING_EXPLORER_ACTIVATION_CACHE_MB"
DEFAULT_ACTIVATION_CACHE_MB = 1024
#: Keep-orders and masks of recent plans, per model; least recently used are evicted.
MASK_CACHE_ENV = "PRUNING_EXPLORER_MASK_CACHE_MB"
DEFAULT_MASK_CACHE_MB = 512


def env_megabytes(env: str, default: int) -> int:
    """Bytes from the environment variable ``env`` (whole megabytes), else ``default`` MB."""
    try:
        value = int(os.environ.get(env, default))
    except ValueError:
        raise ValueError(f"{env} must be a whole number of megabytes") from None
    if value < 1:
        raise ValueError(f"{env} must be at least 1")
    return value * 2**20


def activation_cache_bytes() -> int:
    return env_megabytes(ACTIVATION_CACHE_ENV, DEFAULT_ACTIVATION_CACHE_MB)


def mask_cache_bytes() -> int:
    return env_megabytes(MASK_CACHE_ENV, DEFAULT_MASK_CACHE_MB)
