"""Generate ``docs/conformance.md``, the DICOM conformance statement (PS3.2 structure), from the code's tables.

The tables come from where the node decides: transfer syntaxes from ``dicom_node.pixels.syntaxes``,
the SCP's presentation contexts from ``dicom_node.scp.negotiation.supported_contexts`` with the default
``[scp]`` config, the Q/R and QIDO-RS keys from ``dicom_node.archive.keys``, the DICOMweb routes and their
media types from the REST application's OpenAPI schema, DICOM TLS from ``ScpConfig``. The prose around
them is in this file. ``tests/test_conformance_doc.py`` fails when the document drifts from this output.

Usage::

    python docs/gen_conformance.py            # print
    python docs/gen_conformance.py --write    # rewrite docs/conformance.md
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID

from dicom_node import __version__
from dicom_node.api.app import create_app
from dicom_node.archive.keys import KEYS, LEVELS
from dicom_node.archive.query import MAX_LIMIT
from dicom_node.config import NodeConfig, ScpConfig
from dicom_node.pixels.syntaxes import ACCEPTED_BY_DEFAULT, SYNTAXES
from dicom_node.scp.negotiation import QUERY_RETRIEVE_CLASSES, supported_contexts

OUT = Path(__file__).resolve().parent / "conformance.md"
_QR_LEVEL = {"STUDY": "STUDY", "SERIES": "SERIES", "INSTANCE": "IMAGE"}


def _name(uid: str) -> str:
    return UID(uid).name or uid


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def _syntaxes() -> list[str]:
    rows = [[s.label, f"`{s.uid}`", "yes" if s.uid in ACCEPTED_BY_DEFAULT else "no (decoded when stored)",
             "lossless" if s.lossless else "lossy", "yes" if s.gpu else "no"] for s in SYNTAXES]
    return _table(["Transfer syntax", "UID", "Accepted by default (`scp.transfer_syntaxes`)", "Kind",
                   "GPU decode"], rows)


def _scp_contexts() -> list[str]:
    contexts = supported_contexts(ScpConfig())
    qr = [[_name(str(c.abstract_syntax)), f"`{c.abstract_syntax}`", ", ".join(_name(str(t)) for t in c.transfer_syntax)]
          for c in contexts if str(c.abstract_syntax) not in _storage_classes(contexts)]
    storage = [[_name(str(c.abstract_syntax)), f"`{c.abstract_syntax}`"]
               for c in contexts if str(c.abstract_syntax) in _storage_classes(contexts)]
    lines = ["Verification and Query/Retrieve (SCP):", ""]
    lines += _table(["SOP class", "UID", "Transfer syntaxes"], qr)
    lines += [f"Storage (SCP, and SCP role of a C-GET requestor's sub-operations): {len(storage)} SOP classes, "
              "each with every transfer syntax of `scp.transfer_syntaxes` (default: the \"Accepted by default\" "
              "column above), SCU/SCP role selection accepted (PS3.7 D.3.3.4).", ""]
    lines += _table(["SOP class", "UID"], storage)
    return lines


def _storage_classes(contexts: list[Any]) -> set[str]:
    fixed = {"1.2.840.10008.1.1", *QUERY_RETRIEVE_CLASSES}
    return {str(c.abstract_syntax) for c in contexts} - fixed


def _keys() -> list[str]:
    rows = []
    for level in LEVELS:
        for key in (k for k in KEYS.values() if k.level == level):
            tag = tag_for_keyword(key.keyword)
            assert tag is not None
            matching = "indexed (SQL)" if key.column is not None else (
                "indexed (SQL, on the study's series)" if key.keyword == "ModalitiesInStudy" else "return only")
            rows.append([_QR_LEVEL[level], key.keyword, f"({tag >> 16:04X},{tag & 0xFFFF:04X})", key.vr, matching,
                         "yes" if key.required else "with includefield"])
    return _table(["Level (C-FIND)", "Attribute", "Tag", "VR", "Matching", "Returned by QIDO-RS"], rows)


def _routes() -> list[str]:
    schema = create_app(NodeConfig.model_validate({"api": {"port": 0}}), None).openapi()
    rows = []
    for path, methods in sorted(schema["paths"].items()):
        if not path.startswith("/dicomweb"):
            continue
        for method, op in methods.items():
            responses = op.get("responses", {})
            ok: dict[str, Any] = next((responses[c] for c in ("200", "201", "202") if c in responses), {})
            media = ", ".join(f"`{m}`" for m in ok.get("content", {})) or "-"
            body = ", ".join(f"`{m}`" for m in op.get("requestBody", {}).get("content", {})) or "-"
            rows.append([method.upper(), f"`{path}`", body, media])
    return _table(["Method", "Path", "Request body", "Response media types"], rows)


def _tls() -> list[str]:
    field = ScpConfig.model_fields.get("tls")
    if field is None or not isinstance(field.default_factory, type) or not issubclass(field.default_factory,
                                                                                      BaseModel):
        return ["DICOM TLS is not in this build: the SCP accepts plain TCP only, so deploy it on a trusted",
                "network or behind a TLS terminator.", ""]
    model = field.default_factory
    rows = [[f"`scp.tls.{name}`", f"`{info.default!r}`"] for name, info in model.model_fields.items()]
    return ["The SCP can serve DICOM over TLS (a TLS secure transport connection profile of PS3.15 Annex B;",
            "TLS 1.2 or 1.3) on a second port, with client certificates (mutual TLS) when a CA bundle is set.",
            "Settings (`[scp.tls]`):", "",
            *_table(["Setting", "Default"], rows)]


def generate() -> str:
    """The whole document."""
    lines = [
        "<!-- Generated by docs/gen_conformance.py from the code's tables; edit the generator, not this file. -->",
        "# DICOM Conformance Statement: dicom-node",
        "",
        f"dicom-node {__version__}. Structure after DICOM PS3.2 Annex A.",
        "",
        "## 1 Conformance Statement Overview",
        "",
        "dicom-node receives studies (DIMSE C-STORE, DICOMweb STOW-RS, pull from DICOMweb or DIMSE sources),",
        "runs models on them and writes the results as Segmentation (SEG) and Comprehensive 3D SR (TID 1500)",
        "objects, which it delivers (C-STORE, STOW-RS) and serves (Query/Retrieve SCP, QIDO-RS, WADO-RS).",
        "",
        *_table(["Network service", "User of service (SCU)", "Provider of service (SCP)"], [
            ["Verification", "no", "yes"],
            ["Storage", "yes (delivery of results, C-MOVE and C-GET sub-operations)", "yes"],
            ["Study Root Query/Retrieve FIND", "yes (pull sources)", "yes (results only)"],
            ["Study Root Query/Retrieve MOVE", "yes (pull sources)", "yes (results only)"],
            ["Study Root Query/Retrieve GET", "yes (pull sources)", "yes (results only)"],
            ["DICOMweb STOW-RS", "yes (delivery)", "yes"],
            ["DICOMweb QIDO-RS", "yes (pollers)", "yes (received studies and results)"],
            ["DICOMweb WADO-RS", "yes (pollers, `dicomweb_uri` inputs)", "yes (received studies and results)"],
        ]),
        "## 2 Networking",
        "",
        "### 2.1 Application entity",
        "",
        "One application entity, `scp.ae_title` (default `" + ScpConfig().ae_title + "`), listening on",
        f"`scp.port` (default {ScpConfig().port}); associations from peers not in `scp.allowed_peers` are",
        "rejected when that list is set. Maximum PDU received: `scp.max_pdu`"
        f" (default {ScpConfig().max_pdu} bytes). Asynchronous operations are not negotiated.",
        "",
        "### 2.2 Transfer syntaxes",
        "",
        *_syntaxes(),
        "As SCU (delivery, sub-operations) each object is proposed in its stored transfer syntax and in",
        "Explicit and Implicit VR Little Endian; a C-GET to a peer that accepted neither the stored syntax nor",
        "a decodable one is transcoded with the same UIDs.",
        "",
        "### 2.3 Presentation contexts accepted",
        "",
        *_scp_contexts(),
        "### 2.4 Query/Retrieve (Study Root) and QIDO-RS keys",
        "",
        "C-FIND (STUDY, SERIES, IMAGE levels) and QIDO-RS share one matcher on one index: single value,",
        "list (`\\`), wildcard `*` `?` (not for UI, DA, TM, DT, numbers), DA/TM/DT ranges (open ranges included),",
        "UID lists; person names match regardless of case. Keys the node does not index are answered",
        "zero-length by C-FIND and ignored with a `Warning` header by QIDO-RS. The Q/R SCP answers and",
        "retrieves the node's results (SEG, SR); QIDO-RS also finds received studies.",
        "",
        *_keys(),
        "## 3 DICOMweb",
        "",
        "Services under `/dicomweb` of the REST API (`api.host`, `api.port`). QIDO-RS answers",
        "`application/dicom+json` (`multipart/related; type=\"application/dicom+xml\"` is not offered: 406),",
        "`includefield` (a list, repeated, or `all`), `limit`/`offset` (at most "
        f"{MAX_LIMIT} per response; a `Warning: 299` header says when more matched), `fuzzymatching=true` is",
        "answered without fuzzy matching and a `Warning` header; no match is 200 with `[]`; a malformed",
        "query is 400 with a JSON body naming the key.",
        "",
        *_routes(),
        "## 4 Security",
        "",
        "### 4.1 Association level",
        "",
        *_tls(),
        "### 4.2 DICOMweb and REST",
        "",
        "The same API keys (`X-API-Key`) and OAuth2 bearer JWTs (`Authorization: Bearer`, scopes from the",
        "`scope` claim) as the rest of the REST API: searches and retrievals need the `read` scope, STOW-RS",
        "`submit`. Without keys or a JWKS file the API binds loopback only. Cross-origin browser access",
        "(CORS) only for the origins in `api.cors_allowed_origins` (none by default). Patient attributes",
        "are indexed for search (`qido_*` tables) and never written to logs.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = generate()
    if "--write" in argv:
        OUT.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
