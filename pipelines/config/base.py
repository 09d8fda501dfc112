"""What every viops config schema shares: strict pydantic models, and the error a bad config raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ConfigError", "StrictModel"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and key."""


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, and a validated config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
