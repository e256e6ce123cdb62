"""Routing rules: which models run on a completed series, and where results go.

A rule matches on the calling and called AE titles, Modality, SOP Class UID,
Body Part Examined and Series Description (regular expressions, matched in
full), and on numeric ranges (instance count). Every rule that matches
contributes its models and destinations; a series no rule matches is kept and
reported as unrouted, not an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from dicom_node.config.routing import RoutingConfig, RuleMatch


@dataclass(frozen=True)
class SeriesFacts:
    """What routing may look at: from the index and one instance header (no patient data)."""

    calling_ae: str
    called_ae: str
    modality: str
    sop_class_uid: str
    body_part_examined: str
    series_description: str
    instances: int
    #: Where the series came from (``instances.source``: "dimse", "stow", "dicomweb:<poller>", "qr:<remote>").
    source: str = ""


@dataclass(frozen=True)
class Route:
    """A model to run and where its results go, with the rule that asked for it."""

    rule: str
    model: str
    destinations: tuple[str, ...]


_TEXT_FIELDS = ("calling_ae", "called_ae", "modality", "sop_class_uid", "body_part_examined", "series_description")


def rule_matches(match: RuleMatch, facts: SeriesFacts) -> bool:
    """True when every condition given in ``match`` holds for ``facts``."""
    for name in _TEXT_FIELDS:
        pattern = getattr(match, name)
        if pattern is not None and re.fullmatch(pattern, getattr(facts, name) or "") is None:
            return False
    return match.instances is None or match.instances.contains(facts.instances)


def route(config: RoutingConfig, facts: SeriesFacts, contract_ok: Callable[[str], bool] | None = None,
          only_rules: Collection[str] | None = None) -> list[Route]:
    """Return the routes for a series: one per (model), destinations merged across matching rules.

    Parameters
    ----------
    config : RoutingConfig
        The rules, in order.
    facts : SeriesFacts
        The completed series.
    contract_ok : callable, optional
        ``contract_ok(model)``: does the series satisfy the model's input contract?
        Consulted only by rules with ``model_contract = true``.
    only_rules : collection of str, optional
        Names of the only rules that may apply (a poller's ``rules`` for the series it brought in).
    """
    merged: dict[str, tuple[str, list[str]]] = {}
    for rule in config.rules:
        if only_rules is not None and rule.name not in only_rules:
            continue
        if not rule_matches(rule.match, facts):
            continue
        for model in rule.models:
            if rule.match.model_contract and contract_ok is not None and not contract_ok(model):
                continue
            first_rule, dests = merged.setdefault(model, (rule.name, []))
            dests.extend(d for d in rule.destinations if d not in dests)
    return [Route(rule, model, tuple(dests)) for model, (rule, dests) in merged.items()]


def facts_dict(facts: SeriesFacts) -> dict[str, Any]:
    """Facts as a JSON-ready dict (for the unrouted report)."""
    return dict(facts.__dict__)
