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


#: Largest single upload (model, weights or dataset), overridable for big local work. The app's
#: file uploaders take the same number (``upload_limit_mb``; Streamlit's own
#: ``server.maxUploadSize``, set in .streamlit/config.toml and by ``pruning-explorer app``).
MAX_UPLOAD_ENV = "PRUNING_EXPLORER_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 1024  # 1 GiB: Streamlit's uploaders print it "1GB" on every platform
#: A plan file is a few kB of JSON (one line per overridden unit); its uploader says this limit,
#: not the model's.
MAX_PLAN_UPLOAD_MB = 1


def max_upload_bytes() -> int:
    return env_megabytes(MAX_UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB)


def upload_limit_text(megabytes: int) -> str:
    """``megabytes`` (MiB, as ``server.maxUploadSize`` counts them) as Streamlit's uploader
    prints it beside its button ("… per file"): decimal units, no decimals, the next unit once
    past half of it (512 MiB reads "1GB"). A page that states the limit says this, so the two
    never disagree."""
    value, units = float(megabytes * 2**20), ("B", "KB", "MB", "GB")
    unit = 0
    while unit < len(units) - 1 and value > 500:
        value, unit = value / 1000, unit + 1
    return f"{value:.0f} {units[unit]}"


def max_upload_mb() -> int:
    """The upload limit in whole megabytes, as Streamlit's ``server.maxUploadSize`` takes it."""
    return max_upload_bytes() // 2**20


def activation_cache_bytes() -> int:
    return env_megabytes(ACTIVATION_CACHE_ENV, DEFAULT_ACTIVATION_CACHE_MB)


def mask_cache_bytes() -> int:
    return env_megabytes(MASK_CACHE_ENV, DEFAULT_MASK_CACHE_MB)


#: Memory (MB) and time (s) that analysing an unfamiliar model's channel coupling may take
#: (torch-pruning's dependency graph); past either, structured methods are refused for it
#: with the reason, and the process and the other sessions carry on. 0 s: no guard.
ANALYSIS_MB_ENV = "PRUNING_EXPLORER_ANALYSIS_MB"
DEFAULT_ANALYSIS_MB = 2048
ANALYSIS_S_ENV = "PRUNING_EXPLORER_ANALYSIS_S"
DEFAULT_ANALYSIS_S = 120


def analysis_budget() -> tuple[int, float]:
    """(megabytes, seconds) of the channel analysis budget, from the environment."""
    megabytes = env_megabytes(ANALYSIS_MB_ENV, DEFAULT_ANALYSIS_MB) // 2**20
    try:
        seconds = float(os.environ.get(ANALYSIS_S_ENV, DEFAULT_ANALYSIS_S))
    except ValueError:
        raise ValueError(f"{ANALYSIS_S_ENV} must be a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"{ANALYSIS_S_ENV} must be 0 or more")
    return megabytes, seconds
