"""The error a bad setting raises, shared by the training config and the objective it embeds."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or inconsistent; the message names it."""


def require(cond: bool, name: str, expected: str, got: Any) -> None:
    """Raise `ConfigError` ``"<name>: expected <expected>, got <got>"`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{name}: expected {expected}, got {got!r}")
