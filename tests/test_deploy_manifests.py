"""The deployment examples under ``deploy/`` (issue 18): valid for their tools, and in step with the node.

- ``deploy/compose.yaml`` against the Compose Specification's JSON schema, as vendored by
  ``check-jsonschema`` (``--builtin-schema vendor.compose-spec``; offline).
- ``deploy/kubernetes/*.yaml`` against the Kubernetes JSON schemas that ``kubernetes-validate``
  ships (strict: an unknown field such as a misspelt probe is an error; offline).
- ``deploy/Dockerfile`` through ``hadolint`` and BuildKit's own parser (the ``dockerfile`` package).
- ``deploy/triton/*/config.pbtxt`` parsed as Triton's ``ModelConfig`` protobuf and held to the
  bundled model's spec (names, types, dims, batch size), as the node's Triton backend checks them.
- ``deploy/haproxy/haproxy.cfg`` by ``haproxy -c -f`` (Debian's haproxy; skipped with the reason
  when missing, failed under ``DICOM_NODE_REQUIRE_PEERS=1``).
- ``deploy/node.toml`` loads with the node's own loader (:func:`dicom_node.config.load_config`)
  with the environment each example gives it, and the ports and probe paths of every example
  match that config and the node's routes; a node started from it answers the probes without
  credentials while the rest of its API needs a key.

Each checker is also shown a broken copy, so a checker that silently accepts everything fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dicom_node.config import ConfigError, NodeConfig, load_config
from tests.conftest import REPO, require_tool

DEPLOY = REPO / "deploy"
NODE_TOML = DEPLOY / "node.toml"
#: The oldest Kubernetes minor still commonly run that the manifests must suit (PDB policy/v1: 1.21+).
K8S_VERSION = "1.30"
#: Stand-ins for the site values compose.yaml interpolates and the Kubernetes Secret holds.
KEY_SHA256 = "e2186dbdb1bb4193608605e84f33208765b5693b55edd4f730a719a100eeea6f"  # sha256("change-me")
SITE = {
    "POSTGRES_PASSWORD": "pw",
    "S3_ACCESS_KEY_ID": "dicom-node",
    "S3_SECRET_ACCESS_KEY": "secret",
    "DICOM_NODE_API_KEYS": f'[{{name = "ris", sha256 = "{KEY_SHA256}", scopes = ["read", "submit"]}}]',
}
SECRET = {
    "database-url": "postgresql://dicom_node:pw@postgres:5432/dicom_node",
    "s3-access-key-id": "dicom-node",
    "s3-secret-access-key": "secret",
    "api-keys": SITE["DICOM_NODE_API_KEYS"],
}


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def manifest(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind]
    return doc


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:?message}`` and ``${VAR:-default}`` interpolation (Compose Specification)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in variables:
            return variables[name]
        if op == ":?":
            raise KeyError(f"compose.yaml needs {name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}", one, value)


def compose_environ() -> dict[str, str]:
    env = compose()["services"]["node"]["environment"]
    return {k: interpolate(str(v), SITE) for k, v in env.items()}


def kubernetes_environ() -> dict[str, str]:
    (container,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    out: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            out[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "dicom-node-credentials"
            out[var["name"]] = SECRET[ref["key"]]
    return out


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


# -- schema checkers ---------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    ok = check_compose(DEPLOY / "compose.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = compose()
    broken["services"]["node"]["depends_on"]["postgres"]["condition"] = "service_happy"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    refused = check_compose(tmp_path / "compose.yaml")
    assert refused.returncode == 1 and "service_happy" in refused.stdout


def test_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = manifests()
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    misspelt = manifest("Deployment")
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(misspelt, K8S_VERSION, strict=True)


def test_dockerfile_lints_clean_and_runs_the_node_as_non_root(tmp_path: Path) -> None:
    import dockerfile

    hadolint = Path(sys.executable).with_name("hadolint")
    lint = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\nRUN cd /tmp && apt-get install curl\n")
    assert subprocess.run([str(hadolint), str(tmp_path / "Dockerfile")], capture_output=True, timeout=60).returncode != 0

    commands = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    last = {c.cmd: c for c in commands}  # the runtime stage's final USER, EXPOSE, ENTRYPOINT, CMD
    assert [c.value[0] for c in commands if c.cmd == "FROM"][-1] == "python:3.11-slim"
    assert last["USER"].value[0].split(":")[0] not in ("0", "root")
    config = load_config(NODE_TOML, compose_environ())
    assert set(last["EXPOSE"].value) == {str(config.scp.port), str(config.api.port)}
    assert last["ENTRYPOINT"].value == ("dicom-node",)
    assert last["CMD"].value == ("serve", "--config", "/etc/dicom-node/node.toml")


def test_triton_configs_parse_and_agree_with_the_model_specs() -> None:
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from inference.spec import load_spec

    configs = sorted((DEPLOY / "triton").glob("*/config.pbtxt"))
    routed = {m for rule in load_config(NODE_TOML, compose_environ()).routing.rules for m in rule.models}
    assert {p.parent.name for p in configs} == routed  # Triton serves every model the routing rules run
    types = {"float32": "TYPE_FP32"}
    for path in configs:
        cfg = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        spec = load_spec(REPO / "engines" / path.parent.name / "model.toml")
        assert cfg.name == spec.name and cfg.backend == "onnxruntime"
        assert cfg.max_batch_size >= spec.tensors.max_batch
        for got, want in ((cfg.input, spec.tensors.inputs), (cfg.output, spec.tensors.outputs)):
            assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in got] == [
                (t.name, types[t.dtype], list(t.dims)) for t in want]
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch_sise: 4\n', model_config_pb2.ModelConfig())


def test_haproxy_config_is_valid(tmp_path: Path) -> None:
    haproxy = require_tool("haproxy", "apt-get install haproxy (tests/peers/install_debian_peers.sh)")
    cfg = DEPLOY / "haproxy" / "haproxy.cfg"
    ok = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "haproxy.cfg").write_text(cfg.read_text().replace("balance leastconn", "balance fewestconn", 1))
    assert subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, timeout=60).returncode != 0


# -- in step with the node -----------------------------------------------------------------------------------------


def test_configmap_carries_node_toml_verbatim() -> None:
    assert manifest("ConfigMap")["data"]["node.toml"] == NODE_TOML.read_text()


@pytest.mark.parametrize("environ", [compose_environ, kubernetes_environ], ids=["compose", "kubernetes"])
def test_node_toml_loads_with_each_examples_environment(environ: Any) -> None:
    config = load_config(NODE_TOML, environ())
    assert config.api.auth_enabled and config.api.host == "0.0.0.0" and config.scp.host == "0.0.0.0"
    assert config.objects.s3.has_credential()
    assert config.inference.triton_url == "grpc://triton:8001"
    assert config.inference.models_dir == Path("/opt/dicom-node/engines")
    # The shared index and work queue (issue 18): the DSN comes from the site's secret.
    assert config.storage.database == "postgresql://dicom_node:pw@postgres:5432/dicom_node"


def test_node_toml_alone_refuses_an_open_api() -> None:
    # Secure by default: without the keys from the secret the node does not start on 0.0.0.0.
    with pytest.raises(ConfigError, match="api: binding '0.0.0.0' .*without api_keys"):
        load_config(NODE_TOML, {})


def test_ports_and_probes_match_the_node() -> None:
    from dicom_node.api.routers.health import router

    config: NodeConfig = load_config(NODE_TOML, kubernetes_environ())
    get_routes = {r.path for r in router.routes if "GET" in getattr(r, "methods", set())}
    (container,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": config.scp.port, "api": config.api.port}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in get_routes and ports[probe["port"]] == config.api.port
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(mounts["spool"]) == config.storage.root and mounts["config"] == "/etc/dicom-node"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Any node may claim any job, so every pod mounts the same spool: one ReadWriteMany claim.
    volumes = {v["name"]: v for v in manifest("Deployment")["spec"]["template"]["spec"]["volumes"]}
    claim = manifest("PersistentVolumeClaim")
    assert volumes["spool"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    service = manifest("Service")["spec"]["ports"]
    assert {(p["port"], p["targetPort"]) for p in service} == {(config.scp.port, "dicom"), (config.api.port, "api")}

    node = compose()["services"]["node"]
    assert set(node["expose"]) == {str(config.scp.port), str(config.api.port)}
    assert "./node.toml:/etc/dicom-node/node.toml:ro" in node["volumes"]
    assert f"spool:{config.storage.root}" in node["volumes"]  # one named volume for every replica
    lb = compose()["services"]["lb"]
    assert set(lb["ports"]) == {f"{config.scp.port}:{config.scp.port}", f"{config.api.port}:{config.api.port}"}
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert f"server-template node 1-10 node:{config.scp.port}" in cfg and f"check port {config.api.port}" in cfg
    assert f"server-template node 1-10 node:{config.api.port}" in cfg
    assert cfg.count("uri /readyz") == 2 and f"bind :{config.scp.port}" in cfg and f"bind :{config.api.port}" in cfg


def test_a_node_from_deploy_config_answers_probes_without_a_key(tmp_path: Path) -> None:
    """The probes and the balancer's checks carry no credentials: /healthz and /readyz must not need any."""
    from dicom_node.api.server import ApiFrontend
    from dicom_node.node import Node

    environ = compose_environ()
    environ.pop("DICOM_NODE__STORAGE__DATABASE")  # the embedded index here: no PostgreSQL server named "postgres"
    environ.pop("DICOM_NODE__INFERENCE__TRITON_URL")  # no Triton here: the models run on ONNX Runtime
    environ.update({  # loopback, ephemeral ports and this checkout's folders instead of the container's
        "DICOM_NODE__SCP__HOST": "127.0.0.1", "DICOM_NODE__SCP__PORT": "0",
        "DICOM_NODE__API__HOST": "127.0.0.1", "DICOM_NODE__API__PORT": "0",
        "DICOM_NODE__STORAGE__ROOT": str(tmp_path / "var"), "DICOM_NODE__STORAGE__MIN_FREE_BYTES": "0",
        "DICOM_NODE__INFERENCE__MODELS_DIR": str(REPO / "engines"),
    })
    node = Node(load_config(NODE_TOML, environ), frontend=ApiFrontend)
    node.start()
    try:
        base = f"http://127.0.0.1:{node.api.port}"
        assert httpx.get(base + "/healthz").status_code == 200
        ready = httpx.get(base + "/readyz")
        assert ready.status_code == 200, ready.text
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/v1/models", headers={"Authorization": "Bearer change-me"}).status_code == 200
    finally:
        node.stop()
