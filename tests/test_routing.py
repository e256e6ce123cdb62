"""Routing rules: regular expressions, numeric ranges, merging, and unmatched series."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dicom_node.config import load_config
from dicom_node.config.routing import RoutingConfig
from dicom_node.errors import ConfigError
from dicom_node.routing import SeriesFacts, route

CT = SeriesFacts(calling_ae="CT_SCANNER_1", called_ae="DICOM_NODE", modality="CT",
                 sop_class_uid="1.2.840.10008.5.1.4.1.1.2", body_part_examined="CHEST",
                 series_description="Thorax 1.0 axial", instances=240)


def rules(*items: dict) -> RoutingConfig:
    return RoutingConfig.model_validate({"rules": list(items)})


def test_regex_fields_match_in_full() -> None:
    cfg = rules({"name": "chest", "models": ["ct-lungs"], "destinations": ["pacs"],
                 "match": {"calling_ae": "CT_.*", "modality": "CT", "body_part_examined": "CHEST|THORAX",
                           "series_description": "(?i).*axial.*"}})
    assert [(r.model, r.destinations) for r in route(cfg, CT)] == [("ct-lungs", ("pacs",))]
    partial = rules({"name": "partial", "models": ["ct-body"], "match": {"calling_ae": "CT"}})
    assert route(partial, CT) == [], "a pattern must match the whole value"


def test_numeric_range_and_sop_class() -> None:
    cfg = rules({"name": "big", "models": ["ct-body"], "match": {"instances": {"min": 100, "max": 1000},
                                                                   "sop_class_uid": r"1\.2\.840\.10008\.5\.1\.4\.1\.1\.2"}})
    assert len(route(cfg, CT)) == 1
    small = SeriesFacts(**{**CT.__dict__, "instances": 20})
    assert route(cfg, small) == []


def test_rules_merge_models_and_destinations() -> None:
    cfg = rules(
        {"name": "a", "models": ["ct-body"], "destinations": ["pacs"], "match": {"modality": "CT"}},
        {"name": "b", "models": ["ct-body", "ct-lungs"], "destinations": ["archive", "pacs"], "match": {"modality": "CT|MR"}},
        {"name": "c", "models": ["mr-thing"], "match": {"modality": "MR"}},
    )
    routes = route(cfg, CT)
    assert [(r.rule, r.model, r.destinations) for r in routes] == [
        ("a", "ct-body", ("pacs", "archive")),
        ("b", "ct-lungs", ("archive", "pacs")),
    ]


def test_no_rule_no_route() -> None:
    assert route(RoutingConfig(), CT) == []


def test_bad_rules_are_rejected_naming_the_key(tmp_path) -> None:
    with pytest.raises(ValidationError):
        rules({"name": "x", "models": [], "match": {}})
    toml = tmp_path / "node.toml"
    toml.write_text('[[routing.rules]]\nname = "x"\nmodels = ["ct-body"]\n[routing.rules.match]\nmodality = "CT("\n')
    with pytest.raises(ConfigError, match=r"^routing\.rules\.0\.match\.modality"):
        load_config(toml, {})


def test_model_contract_condition_filters_models() -> None:
    cfg = rules({"name": "c", "models": ["ct-body", "ct-lungs"], "destinations": ["pacs"],
                 "match": {"modality": "CT", "model_contract": True}},
                {"name": "any", "models": ["always"], "match": {"modality": "CT"}})
    routes = route(cfg, CT, contract_ok=lambda model: model == "ct-lungs")
    assert [r.model for r in routes] == ["ct-lungs", "always"]
