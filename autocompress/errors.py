"""Typed exceptions: each carries the process exit code the CLI uses for it."""

from __future__ import annotations


class AutocompressError(Exception):
    """Base class of every error meant for the user (printed as one line, no traceback)."""

    exit_code = 1


class ConfigError(AutocompressError):
    """A configuration or usage problem: bad YAML, unknown key, value out of range."""

    exit_code = 2


class DataError(AutocompressError):
    """The data set is missing, unreadable or inconsistent."""


class ModelError(AutocompressError):
    """The model cannot be built, loaded or compressed as asked."""


class ServiceUnavailable(AutocompressError):
    """The Optuna storage or the MLflow tracking server stayed unreachable longer than
    ``search.reconnect_s``; the same command resumes once it is back."""

    exit_code = 3
