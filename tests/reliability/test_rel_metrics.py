"""``/metrics`` on a real node: open without authentication, behind a scope once keys are configured.

Before this suite ``/metrics`` answered anyone, even on a node whose every other
endpoint required an API key.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.test_api_auth import key


def get(node: Any, secret: str | None = None, bearer: bool = False) -> httpx.Response:
    headers = {} if secret is None else ({"authorization": f"Bearer {secret}"} if bearer else {"x-api-key": secret})
    return httpx.get(f"http://127.0.0.1:{node.api.port}/metrics", headers=headers, timeout=30)


def test_metrics_need_the_metrics_scope_when_keys_are_configured(start_node: Any) -> None:
    node = start_node(api={"api_keys": [key("reader", "r-secret", ["read"]), key("prom", "p-secret", ["metrics"])]})
    anonymous = get(node)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    reader = get(node, "r-secret")
    assert reader.status_code == 403 and "'metrics'" in reader.json()["error"]["description"]
    scraped = get(node, "p-secret", bearer=True)  # how Prometheus sends a bearer token
    assert scraped.status_code == 200 and "dicom_node_" in scraped.text


def test_metrics_scope_and_public_are_configurable(start_node: Any) -> None:
    keys = [key("reader", "r-secret", ["read"])]
    node = start_node(api={"api_keys": keys, "metrics_scope": "read"})
    assert get(node).status_code == 401 and get(node, "r-secret").status_code == 200
    public = start_node(root=node.config.storage.root.parent / "public", api={"api_keys": keys, "metrics_public": True})
    assert get(public).status_code == 200


def test_metrics_stay_open_without_any_authentication(start_node: Any) -> None:
    assert get(start_node()).status_code == 200
