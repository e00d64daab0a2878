"""CLI sub-commands of this package.

``add_commands(sub, experiment_parser)`` adds parsers to the CLI's sub-parser set and returns
``{command name: handler(args) -> exit code}``; ``experiment_parser(sub, name, help)`` makes a
parser that already takes the experiment file and ``--set`` overrides.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["add_commands"]


def add_commands(sub, experiment_parser: Callable) -> dict[str, Callable]:
    return {}
