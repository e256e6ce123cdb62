"""Health endpoints against a real uvicorn server started by the node."""

from __future__ import annotations

import httpx

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.scu import send_all


def url(node: Node, path: str) -> str:
    return f"http://127.0.0.1:{node.api.port}{path}"


def test_ping_healthz_readyz(start_node) -> None:
    from pathlib import Path

    node: Node = start_node(inference={"models_dir": str(Path(__file__).resolve().parents[1] / "engines")})
    assert httpx.get(url(node, "/ping")).json() == {"status": "ok"}
    assert httpx.get(url(node, "/healthz")).status_code == 200
    ready = httpx.get(url(node, "/readyz"))
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["checks"]["models"] == {"ct-body": "ok", "ct-body-png": "ok", "ct-lungs": "ok",
                                        "demo-annotation": "ok", "demo-image-embedding": "ok", "demo-image-text": "ok"}
    assert body["checks"]["index"] == "ok" and body["checks"]["spool"] == "ok"


def test_readyz_names_what_is_not_ready(start_node, tmp_path) -> None:
    models = tmp_path / "engines" / "broken"
    models.mkdir(parents=True)
    (models / "model.toml").write_text('name = "broken"\nversion = "1"\ntask = "nonsense"\n')
    node: Node = start_node(inference={"models_dir": str(tmp_path / "engines")})
    ready = httpx.get(url(node, "/readyz"))
    assert ready.status_code == 503
    assert "invalid spec" in ready.json()["checks"]["models"]["broken"]


def test_metrics_count_what_arrived(start_node) -> None:
    node: Node = start_node()
    send_all(node.scp.port, ct_datasets(SeriesSpec(slices=3, rows=16, columns=16, seed="metrics")))
    text = httpx.get(url(node, "/metrics")).text
    assert "dicom_node_instances_received_total 3.0" in text
    assert 'dicom_node_series{state="receiving"}' in text or 'dicom_node_series{state="complete"}' in text


def test_errors_are_json(start_node) -> None:
    node: Node = start_node()
    missing = httpx.get(url(node, "/no/such/thing"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    big = httpx.post(url(node, "/ping"), content=b"x" * (node.config.api.max_body_bytes + 1))
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"


def test_chunked_body_over_the_limit_is_cut_off(start_node) -> None:
    """A body without Content-Length is counted as it arrives and refused at the limit."""
    node: Node = start_node(api={"port": 0, "max_body_bytes": 4096})

    def chunks():
        for _ in range(64):
            yield b"{" + b" " * 1023

    r = httpx.post(url(node, "/v1/models/ct-body:predict"), content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    ok = httpx.post(url(node, "/v1/models/ct-body:predict"), json={"instances": []})
    assert ok.status_code != 413
