"""README.md's examples, run the way a reader runs them, so that none can rot silently.

The README's parts moved to docs/ (``DOCUMENTS``) are checked the same way. Every fenced block is one of:

- ``sh`` / ``console``: executed, in README order, by one bash process in a
  scratch folder prepared like a fresh checkout (Makefile, pyproject.toml,
  conf/, engines/, docs/ copied; ``.venv`` linked, so ``make run`` finds its
  install stamp and starts without installing). Background commands (``make run
  &``, ``storescp ... &``) keep running until the end, against real peers (DCMTK,
  the node's own SCP and REST API, a webhook receiver); every command must
  succeed, and the outcome the README promises is then checked (files in the
  stand-in PACS, counts, jobs done, a verified webhook). A ``console`` block's
  shown output must match, with ``...`` standing for any text.
- ``toml``: loaded through :func:`dicom_node.config.load_config` on its own, or
  appended to ``conf/node.toml`` when it refers to what that file defines.
- ``json``: parsed.
- anything else must follow ``<!-- not executed: REASON -->``.

The README's ports (11112, 11113, 8080, 9000, 3000) are used as written; one that is
busy on this machine is replaced by a free one in every block and in the scratch
``conf/node.toml``. A failure names the README line of the block that broke.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

from dicom_node.config import load_config
from dicom_node.errors import ConfigError
from tests.conftest import free_port, peers_required, require_tool, wait_port
from tests.readme.blocks import Block, console_steps, github_anchor, output_matches, parse_blocks
from tests.readme.shell import BlockFailed, Shell

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Parts of the README moved to docs/ to keep it short; their blocks are checked like the README's and
#: run after its own, in this order, against the same node and scratch checkout.
DOCUMENTS = (README, ROOT / "docs" / "pulling.md", ROOT / "docs" / "api.md")
README_PORTS = (11112, 11113, 8080, 9000, 3000)
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22"}
BLOCK_TIMEOUT = 120.0
OUTCOME_TIMEOUT = 90.0


def _blocks() -> list[Block]:
    return [block for doc in DOCUMENTS
            for block in parse_blocks(doc.read_text(encoding="utf-8"), str(doc.relative_to(ROOT)))]


def _documents_text() -> str:
    return "\n".join(doc.read_text(encoding="utf-8") for doc in DOCUMENTS)


def test_every_block_is_executed_validated_or_marked() -> None:
    unchecked = [b.where for b in _blocks() if b.treatment is None]
    assert not unchecked, ("blocks that no test runs or validates (use sh/console/toml/json, or put "
                           "'<!-- not executed: REASON -->' on the line before):\n" + "\n".join(unchecked))


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make run" in text and "make test" in text, "CI greps README.md for `make run` and `make test`"


def _load_toml_block(block: Block, tmp_path: Path) -> None:
    """Load the block alone; if that fails, as an addition to conf/node.toml (as the README says to use it)."""
    alone = tmp_path / f"line{block.line}.toml"
    alone.write_text(block.text)
    try:
        load_config(alone, environ={})
        return
    except ConfigError as exc:
        first = exc
    appended = tmp_path / "conf" / f"line{block.line}.toml"
    appended.parent.mkdir(exist_ok=True)
    appended.write_text((ROOT / "conf" / "node.toml").read_text(encoding="utf-8") + "\n" + block.text)
    try:
        load_config(appended, environ={})
    except ConfigError as exc:
        pytest.fail(f"{block.where}: not a valid config: alone: {first}; appended to conf/node.toml: {exc}")


def test_toml_blocks_load_through_the_config_loader(tmp_path: Path) -> None:
    blocks = [b for b in _blocks() if b.lang == "toml" and b.treatment == "validate"]
    assert blocks, "README.md has no TOML example"
    for block in blocks:
        _load_toml_block(block, tmp_path)


def test_json_blocks_parse() -> None:
    for block in _blocks():
        if block.lang == "json" and block.treatment == "validate":
            try:
                json.loads(block.text)
            except json.JSONDecodeError as exc:
                pytest.fail(f"{block.where}: not JSON: {exc}")


def _exports(block: Block) -> dict[str, str]:
    found = re.findall(r"^export (DICOM_NODE__\w+)='(.*)'", block.text, flags=re.MULTILINE)
    return dict(found)


def test_environment_overrides_equal_the_toml_shown_beside_them(tmp_path: Path) -> None:
    """The "Results back into a PACS" exports and the TOML block after them configure the same node."""
    blocks = _blocks()
    env_block = next((b for b in blocks if b.lang == "sh" and "DICOM_NODE__DELIVERY__DESTINATIONS" in b.text), None)
    assert env_block is not None, "README.md no longer shows list values as environment overrides"
    toml_block = next(b for b in blocks if b.lang == "toml" and b.line > env_block.line)
    path = tmp_path / "same.toml"
    path.write_text(toml_block.text)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    by_env = load_config(empty, environ=_exports(env_block))
    by_file = load_config(path, environ={})
    for section in ("routing", "delivery", "api"):
        assert getattr(by_env, section) == getattr(by_file, section), (
            f"{env_block.where} and {toml_block.where} configure {section} differently")


def test_benchmark_links_point_at_headings() -> None:
    bench = (ROOT / "bench" / "README.md").read_text(encoding="utf-8")
    anchors = {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", bench, flags=re.MULTILINE)}
    links = re.findall(r"\(bench/README\.md#([^)]+)\)", README.read_text(encoding="utf-8"))
    assert links, "the README's benchmark summary links to no table in bench/README.md"
    missing = sorted(set(links) - anchors)
    assert not missing, f"bench/README.md has no heading for: {missing}"


def test_webhook_receiver_checks_as_the_readme_says() -> None:
    text = _documents_text()
    rule = re.search(r"`(hmac\.compare_digest\(header, .*?\))`", text)
    assert rule is not None, "the README no longer shows how a receiver checks the signature"
    receiver = (ROOT / "docs" / "examples" / "webhook_receiver.py").read_text(encoding="utf-8")
    assert rule.group(1) in receiver, "docs/examples/webhook_receiver.py checks differently from the README"


# --- running the shell examples ---------------------------------------------------------------


@dataclass
class Run:
    """The scratch checkout, its shell, and the ports the README's numbers map to."""

    checkout: Path
    shell: Shell
    ports: dict[int, int]
    used: set[str] = field(default_factory=set)

    def port(self, readme_port: int) -> int:
        return self.ports.get(readme_port, readme_port)

    def get_json(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port(8080)}{path}", timeout=10) as resp:
            return json.load(resp)


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _substitute(text: str, ports: dict[int, int]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"\b{old}\b", str(new), text)
    return text


def _checkout(tmp: Path, ports: dict[int, int]) -> Path:
    """A folder laid out like a fresh clone whose .venv is this checkout's (already installed)."""
    venv = ROOT / ".venv"
    stamp = venv / ".installed-run"
    if not stamp.is_file():
        reason = f"{stamp} missing: `make run` would install; run `make install` (or `make test`) first"
        if peers_required():
            pytest.fail(reason)
        pytest.skip(reason)
    co = tmp / "checkout"
    co.mkdir()
    shutil.copy2(ROOT / "Makefile", co / "Makefile")
    shutil.copytree(ROOT / "conf", co / "conf")
    shutil.copytree(ROOT / "engines", co / "engines", ignore=shutil.ignore_patterns("cache", "*.plan", "__pycache__"))
    shutil.copytree(ROOT / "docs", co / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    (co / "tests" / "peers").mkdir(parents=True)
    shutil.copy2(ROOT / "tests" / "peers" / "install_ohif.sh", co / "tests" / "peers" / "install_ohif.sh")  # make viewer
    node_toml = co / "conf" / "node.toml"
    node_toml.write_text(_substitute(node_toml.read_text(encoding="utf-8"), ports))
    shutil.copyfile(ROOT / "pyproject.toml", co / "pyproject.toml")
    # Older than the install stamp, so make sees nothing to reinstall (and never pip-installs this folder
    # into the shared .venv, which would repoint its editable install here).
    older = stamp.stat().st_mtime - 60
    os.utime(co / "pyproject.toml", (older, older))
    (co / ".venv").symlink_to(venv)
    # As a user's shell would run it: not as a sub-make of `make test` (which prints "Entering directory").
    user_env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(["make", "-n", "run"], cwd=co, env=user_env, capture_output=True, text=True, check=False)
    assert dry.stdout.strip() == ".venv/bin/dicom-node serve", f"`make run` would do more than serve:\n{dry.stdout}{dry.stderr}"
    return co


def _wait(what: str, probe: Callable[[], bool], timeout: float = OUTCOME_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(0.25)


# Outcome checks, keyed by a phrase of the block they follow. Each gets the run and the block's output.


def _node_ready(run: Run, out: str) -> None:
    assert "pip install" not in out, "make run reinstalled instead of serving"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{run.port(8080)}/readyz", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    _wait("GET /readyz answering 200", ready)
    wait_port(run.port(11112), timeout=10)
    assert "node ready" in run.shell.transcript(), "the node never logged `node ready`"


def _jobs_done(count: int) -> Callable[[Run, str], None]:
    def check(run: Run, out: str) -> None:
        def done() -> bool:
            jobs = run.get_json("/v1/jobs?limit=100")
            assert isinstance(jobs, dict)
            failed = [j for j in jobs["jobs"] if j["status"] in ("failed", "dead-letter")]
            assert not failed, f"jobs failed: {failed}"
            return sum(j["status"] == "done" for j in jobs["jobs"]) >= count
        _wait(f"{count} jobs done", done)
    return check


def _pacs_received(run: Run, out: str) -> None:
    _jobs_done(4)(run, out)
    pacs = run.checkout / "pacs"

    def arrived() -> bool:
        return len(list(pacs.glob("SG.*"))) >= 2 and len(list(pacs.glob("SR*.*"))) >= 2
    _wait("two SG.* and two SR*.* files in ./pacs", arrived)
    segs = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(pacs.glob("SG.*"))]
    assert len({int(ds.SeriesNumber) for ds in segs}) == len(segs), "two models' SEG series share a series number"
    for ds in segs:
        algorithm = ds.SegmentSequence[0].SegmentAlgorithmName
        assert algorithm in ds.SeriesDescription, f"SEG series description {ds.SeriesDescription!r} does not name {algorithm}"


def _status_counts(run: Run, out: str) -> None:
    line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
    assert line is not None, "status --json printed no JSON"
    assert json.loads(line) == {"studies": 1, "series": 1, "instances": 64, "pending": 0, "complete": 1}
    for model in ("ct-body", "ct-lungs"):
        assert model in out
    assert len(re.findall(r"\bdone\b", out)) >= 2, "jobs list does not show both jobs done"
    assert "SEG" in out and "SR" in out, "results list does not name SEG and SR"


def _ls_pacs(run: Run, out: str) -> None:
    assert "SG." in out and "SR" in out


def _findscu(run: Run, out: str) -> None:
    modalities = set(re.findall(r"\(0008,0060\) CS \[(\w+)\s*\]", out))
    assert {"SEG", "SR"} <= modalities, f"C-FIND found modalities {modalities}, not SEG and SR"


def _getscu(run: Run, out: str) -> None:
    classes = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in (run.checkout / "qr").iterdir()}
    assert SEG_CLASS in classes and classes & SR_CLASSES, f"C-GET brought {classes}"


def _check_passes(run: Run, out: str) -> None:
    result = json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))
    assert result["verdict"] == "pass" and result["instances"] == 64, result


def _models_listed(run: Run, out: str) -> None:
    for model in ("ct-body", "ct-body-png", "ct-lungs"):
        assert model in out, f"models list does not show {model}"


def _seg_downloaded(run: Run, out: str) -> None:
    seg = pydicom.dcmread(run.checkout / "seg.dcm")
    source = pydicom.dcmread(run.checkout / "ct2" / "0001.dcm", stop_before_pixels=True)
    assert seg.SOPClassUID == SEG_CLASS and seg.StudyInstanceUID == source.StudyInstanceUID


def _predict_area(run: Run, out: str) -> None:
    area = float(out.strip().splitlines()[-1])
    assert area > 0, "ct-body marked no body on the middle slice"


def _receiver_listening(run: Run, out: str) -> None:
    wait_port(run.port(9000), timeout=20)


def _webhook_verified(run: Run, out: str) -> None:
    def delivered() -> bool:
        return any(ln.startswith("verified ") and "EX-42" in ln for ln in run.shell.transcript().splitlines())
    _wait("the receiver printing a verified webhook for EX-42", delivered)
    assert "REJECTED" not in run.shell.transcript(), "the receiver rejected a signature"


def _viewer_serving(run: Run, out: str) -> None:
    """OHIF is served with an app-config naming the node's DICOMweb, and the node lets that origin read it."""
    wait_port(run.port(3000), timeout=60)
    with urllib.request.urlopen(f"http://127.0.0.1:{run.port(3000)}/app-config.js", timeout=10) as resp:
        config = resp.read().decode()
    assert f"http://127.0.0.1:{run.port(8080)}/dicomweb" in config, config[:500]
    origin = f"http://127.0.0.1:{run.port(3000)}"
    request = urllib.request.Request(f"http://127.0.0.1:{run.port(8080)}/dicomweb/studies", headers={"Origin": origin})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers.get("access-control-allow-origin") == origin, dict(resp.headers)
        assert json.load(resp), "QIDO-RS found no study"


def _jobs_by_examination(run: Run, out: str) -> None:
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["jobs"], "GET /v1/jobs?examination_id=EX-42 found no job"


CHECKS: list[tuple[str, Callable[[Run, str], None]]] = [
    ("make run &", _node_ready),
    ("ct/*.dcm", _jobs_done(2)),
    ("ct2/*.dcm", _pacs_received),
    ("status --json", _status_counts),
    ("ls pacs", _ls_pacs),
    ("make viewer &", _viewer_serving),
    ("findscu", _findscu),
    ("getscu", _getscu),
    ("dicom-node check", _check_passes),
    ("models list", _models_listed),
    ("/v1/results/", _seg_downloaded),
    (":predict", _predict_area),
    ("webhook_receiver.py", _receiver_listening),
    ("/v1/invocations", _webhook_verified),
    ("examination_id=EX-42", _jobs_by_examination),
]


def _run_block(run: Run, block: Block) -> None:
    text = _substitute(block.text, run.ports)
    if block.lang == "sh":
        out, errors = run.shell.run(text, BLOCK_TIMEOUT)
        if errors:
            failed = "; ".join(f"{block.source}:{block.line + n} {what}" for n, what in errors)
            raise BlockFailed(f"commands failed: {failed}\n--- output ---\n{out}")
    else:
        out = ""
        for step in console_steps(text):
            got, errors = run.shell.run(step.command + "\n", BLOCK_TIMEOUT)
            if errors:
                failed = "; ".join(what for _, what in errors)
                raise BlockFailed(f"{block.source}:{block.line + 1 + step.offset} failed: {failed}\n{got}")
            if not output_matches(step.expected, got):
                raise BlockFailed(f"{block.source}:{block.line + 1 + step.offset} printed\n{got.strip()}\nwhere the README shows\n"
                                  f"{step.expected.strip()}")
            out += got
    for phrase, check in CHECKS:
        if phrase in block.text:
            run.used.add(phrase)
            check(run, out)


@pytest.mark.peers
def test_shell_examples_run(tmp_path: Path) -> None:
    for tool in ("make", "curl", "storescp", "storescu", "findscu", "getscu"):
        require_tool(tool, "DCMTK (apt-get install dcmtk), curl and make")
    ports = {p: free_port() for p in README_PORTS if _port_busy(p)}
    checkout = _checkout(tmp_path, ports)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DICOM_NODE__") and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV")}
    if 8080 in ports:
        # The API port is a built-in default, not in conf/node.toml, so a busy one is moved from the environment.
        env["DICOM_NODE__API__PORT"] = str(ports[8080])
    shell = Shell(checkout, env, tmp_path / "transcript.log")
    run = Run(checkout, shell, ports)
    try:
        for block in _blocks():
            if block.treatment != "execute":
                continue
            try:
                _run_block(run, block)
            except BlockFailed as exc:
                pytest.fail(f"{block.where} broke: {exc}")
            except (AssertionError, OSError, ValueError, KeyError) as exc:
                pytest.fail(f"{block.where} broke: {type(exc).__name__}: {exc}\n"
                            f"--- last of the transcript ---\n{shell.transcript()[-3000:]}")
    finally:
        shell.close()
    unused = [phrase for phrase, _ in CHECKS if phrase not in run.used]
    assert not unused, f"outcome checks that matched no README block (update tests/test_readme.py): {unused}"


def _help(words: list[str]) -> str:
    """What ``dicom-node WORDS --help`` prints (the real parser, in-process)."""
    from dicom_node.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*words, "--help"])
    assert exited.value.code == 0, f"dicom-node {' '.join(words)} --help failed"
    return out.getvalue()


def test_command_synopsis_matches_the_cli() -> None:
    """Each command and option of the "Command line" synopsis exists in the CLI."""
    synopsis = next((b for b in _blocks() if b.section == "Command line" and b.lang == "text"), None)
    assert synopsis is not None, "README.md has no command synopsis"
    for line in synopsis.text.splitlines():
        usage = re.split(r"\s{2,}", line.strip())[0]  # drop the description column
        if not usage.startswith("dicom-node "):
            continue
        alternatives = usage.removeprefix("dicom-node ").split(" | ")
        command = alternatives[0].split()[0]
        for i, alt in enumerate(alternatives):
            words = [w for w in alt.split() if re.fullmatch(r"[a-z][a-z-]*", w)]
            words = words[:2] if i == 0 else [command, words[0]]
            words = [w for w in words if w not in ("PATH", "NAME", "ID")]
            if len(words) == 2 and words[1] not in _help([command]):
                words = words[:1]  # a positional value, not a subcommand
            text = _help(words)
            for option in re.findall(r"--[a-z][a-z-]*", alt):
                assert option in text, f"{synopsis.where}: `dicom-node {' '.join(words)}` has no {option}"


def test_configuration_table_names_real_keys() -> None:
    """Every key in the README's configuration table is a field of the validated config."""
    from dicom_node.config import NodeConfig

    text = README.read_text(encoding="utf-8")
    table = text[text.index("\n## Configuration"):]
    table = table[: table.index("\n#", 1)]
    keys = [k for row in re.findall(r"^\| (`[^|]+)\|", table, flags=re.MULTILINE)
            for k in re.findall(r"`([a-z_]+\.[a-z_]+)`", row)]
    assert len(keys) > 20, f"the configuration table lost its rows ({len(keys)} keys found)"
    for key in keys:
        section, name = key.split(".")
        assert section in NodeConfig.model_fields, f"README config table: no section {section!r} ({key})"
        model = NodeConfig.model_fields[section].annotation
        assert isinstance(model, type) and name in getattr(model, "model_fields", {}), f"README config table: no key {key}"


def test_rest_paths_and_query_parameters_exist(tmp_path: Path) -> None:
    """Every `METHOD /path?param=` the README names is a route of the app, with those query parameters."""
    from dicom_node.api.app import create_app
    from dicom_node.api.deps import ApiServices
    from dicom_node.node import Node
    from tests.conftest import node_config

    config = node_config(tmp_path / "node", api={"enabled": False}, inference={"models_dir": str(ROOT / "engines")})
    spec = create_app(config, ApiServices.of(Node(config))).openapi()
    routes: dict[tuple[str, str], set[str]] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
            routes[(method.upper(), re.sub(r"\{[^}]*\}", "{}", path))] = params
    named = re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`", _documents_text())
    assert len(named) > 15, "the README's REST reference lost its rows"
    for method, raw in named:
        path, _, query = raw.partition("?")
        optional = re.fullmatch(r"(.*)\[(.*)\](.*)", path)
        variants = [optional[1] + optional[3], optional[1] + optional[2] + optional[3]] if optional else [path]
        for variant in variants:
            key = (method, re.sub(r"\{[^}]*\}", "{}", variant))
            assert key in routes, f"README names `{method} {variant}`, which the app does not serve"
            for param in re.findall(r"([a-z_]+)=", query):
                assert param in routes[key], f"README names `{method} {variant}?{param}=`, which the app does not take"
