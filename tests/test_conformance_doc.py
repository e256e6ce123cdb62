"""docs/conformance.md is generated from the code's tables (docs/gen_conformance.py) and must not drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_conformance_statement_matches_the_code() -> None:
    spec = importlib.util.spec_from_file_location("gen_conformance", DOCS / "gen_conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.generate()
    assert (DOCS / "conformance.md").read_text(encoding="utf-8") == expected, (
        "docs/conformance.md drifted from the code: run `python docs/gen_conformance.py --write`")
    for section in ("## 1 Conformance Statement Overview", "### 2.2 Transfer syntaxes", "### 2.4 Query/Retrieve",
                    "## 3 DICOMweb", "## 4 Security"):
        assert section in expected
    assert "`/dicomweb/studies`" in expected and "| STUDY | PatientName |" in expected
