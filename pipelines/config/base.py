"""What every viops config schema shares: strict pydantic models, and the error a bad config raises."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipelines.errors import NotRetryable

__all__ = ["ConfigError", "StrictModel", "Name"]

def _no_parent_reference(name: str) -> str:
    if ".." in name:
        raise ValueError("a name may not contain '..'")
    return name


#: A config, registered model or experiment name: it becomes part of registry names, paths and URLs, so letters,
#: digits, ``_``, ``.`` and ``-`` only, starting with a letter or digit (no spaces, no ``/``, no ``..``).
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"), AfterValidator(_no_parent_reference)]


class ConfigError(ValueError, NotRetryable):
    """The configuration is invalid; the message names the file and key."""


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, and a validated config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
