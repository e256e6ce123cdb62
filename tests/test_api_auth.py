"""Authentication and scopes of the resource endpoints on a real uvicorn server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from dicom_node.node import Node

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")


def key(name: str, secret: str, scopes: list[str]) -> dict[str, object]:
    return {"name": name, "sha256": hashlib.sha256(secret.encode()).hexdigest(), "scopes": scopes}


KEYS = [key("reader", "r-secret", ["read"]), key("submitter", "s-secret", ["read", "submit"]),
        key("admin", "a-secret", ["read", "submit", "admin"])]


def call(node: Node, method: str, path: str, secret: str | None = None, headers: dict[str, str] | None = None,
         **kw: object) -> httpx.Response:
    sent = {**({"x-api-key": secret} if secret else {}), **(headers or {})}
    return httpx.request(method, f"http://127.0.0.1:{node.api.port}{path}", headers=sent, **kw)  # type: ignore[arg-type]


def test_credentials_and_scopes(start_node) -> None:
    node: Node = start_node(api={"api_keys": KEYS, "admin_hosts": ["10.0.0.0/8"]}, inference={"models_dir": ENGINES})
    for path in ("/v1/models", "/v1/jobs", "/v1/worklist", "/v1/studies/1.2/results", "/v1/results/1.2",
                 "/dicomweb/studies/1.2/series/1.3"):
        r = call(node, "GET", path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert call(node, "GET", "/v1/models", "wrong").status_code == 401
    assert call(node, "GET", "/v1/models", "r-secret").status_code == 200
    bearer = httpx.get(f"http://127.0.0.1:{node.api.port}/v1/jobs", headers={"authorization": "Bearer r-secret"})
    assert bearer.status_code == 200
    stow = call(node, "POST", "/dicomweb/studies", "r-secret", content=b"x",
                headers={"content-type": "multipart/related; boundary=x"})
    assert stow.status_code == 403 and "submit" in stow.json()["error"]["description"]
    assert call(node, "POST", "/v1/jobs/abc/retry", "r-secret").status_code == 403
    assert call(node, "POST", "/v1/jobs/abc/retry", "s-secret").status_code == 404
    assert call(node, "DELETE", "/admin/models/ct-body", "s-secret").status_code == 403
    denied = call(node, "DELETE", "/admin/models/ct-body", "a-secret")
    assert denied.status_code == 403 and "address" in denied.json()["error"]["description"]
    assert Path(ENGINES, "ct-body", "model.toml").is_file()


def test_admin_from_an_allowed_host(start_node, tmp_path: Path) -> None:
    node: Node = start_node(api={"api_keys": KEYS, "admin_hosts": ["127.0.0.0/8"]},
                            inference={"models_dir": str(tmp_path / "models")})
    (tmp_path / "models").mkdir()
    assert call(node, "DELETE", "/admin/models/absent", "a-secret").status_code == 404
    assert call(node, "PATCH", "/admin/models/absent", "r-secret", json={}).status_code == 403


def test_oauth2_bearer_jwts_checked_against_a_jwks_file(start_node, tmp_path: Path) -> None:
    """RS256 tokens signed by the key in the JWKS file are accepted with their scopes; others are 401."""
    import json
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public_jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    node: Node = start_node(api={"jwks_file": str(jwks), "jwt_audience": "dicom-node", "jwt_issuer": "https://idp"},
                            inference={"models_dir": ENGINES})

    def token(scope: str, key: object = signing, **claims: object) -> str:
        body = {"sub": "svc", "scope": scope, "aud": "dicom-node", "iss": "https://idp", "exp": time.time() + 60, **claims}
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})

    def get(tok: str, path: str = "/v1/models") -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{node.api.port}{path}", headers={"authorization": f"Bearer {tok}"})

    assert get(token("read")).status_code == 200
    assert get(token("submit")).status_code == 403, "a token without the read scope cannot read"
    assert get(token("read", key=other)).status_code == 401, "wrong signature"
    assert get(token("read", exp=time.time() - 10)).status_code == 401, "expired"
    assert get(token("read", aud="someone-else")).status_code == 401, "wrong audience"
    assert get(token("read", iss="https://evil")).status_code == 401, "wrong issuer"
    assert httpx.get(f"http://127.0.0.1:{node.api.port}/v1/models").status_code == 401
