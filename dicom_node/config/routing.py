"""The ``[routing]`` config section: rules that pick models and destinations for a series.

The matching itself lives in :mod:`dicom_node.routing`; this module only validates
the rules (regular expressions compile, ranges are numbers) so the config package
needs nothing above it.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


class NumericRange(BaseModel):
    """Inclusive bounds; either may be left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = None
    max: float | None = None

    def contains(self, value: float | None) -> bool:
        """True when ``value`` lies within the bounds (a missing value never does)."""
        if value is None:
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class RuleMatch(BaseModel):
    """Conditions of one rule; all given conditions must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    calling_ae: str | None = None
    called_ae: str | None = None
    modality: str | None = None
    sop_class_uid: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    instances: NumericRange | None = None
    #: Run a model of this rule only on series that satisfy that model's input contract
    #: (checked on headers, without decoding); other models of the rule are unaffected.
    model_contract: bool = False

    @field_validator("calling_ae", "called_ae", "modality", "sop_class_uid", "body_part_examined", "series_description")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v


class Rule(BaseModel):
    """One routing rule: when ``match`` holds, run ``models`` and send results to ``destinations``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64)
    match: RuleMatch = Field(default_factory=RuleMatch)
    models: list[str] = Field(min_length=1)
    destinations: list[str] = Field(default_factory=list)


class RoutingConfig(BaseModel):
    """The ``[routing]`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[Rule] = Field(default_factory=list)
