"""Input-contract validation: instances and series against a model's contract.

Public API: :class:`Contract`, :func:`load_contract`, :func:`validate_series`,
:class:`SeriesReport`, :class:`Issue`. Built-in contracts live in
``contracts/*.toml`` (package data): ``cxr-foundation`` and ``ct-volume``.
"""

from dicom_node.validation.contract import Contract, GeometryRules, builtin_contracts, load_contract
from dicom_node.validation.rules import Issue, SeriesReport, validate_instance, validate_series

__all__ = [
    "Contract",
    "GeometryRules",
    "Issue",
    "SeriesReport",
    "builtin_contracts",
    "load_contract",
    "validate_instance",
    "validate_series",
]
