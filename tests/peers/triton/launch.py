"""Start a real Triton Inference Server for tests and benchmarks.

Uses the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel
(installed in ``.venv-triton`` by ``tests/peers/setup_triton.sh``), started
directly: PyTriton's own ``Triton().bind`` fails on Python 3.11. The model
repository is generated from dicom-node model specs: ``config.pbtxt`` from
``config.pbtxt.in`` (Python backend, ``max_batch_size``, dynamic batching)
and ``model.py``, which runs the model's ONNX file with onnxruntime inside
the backend stub. Ports are ephemeral, on loopback only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from inference.spec import ModelSpec
from inference.store import ModelEntry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PB_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside .venv-triton that the server needs."""

    server: Path
    backends: Path
    stub: Path
    site_packages: Path


def find_install() -> tuple[TritonInstall | None, str]:
    """Locate the tritonserver binary and the Python 3.11 backend stub; ``(None, why)`` when missing."""
    venv = Path(os.environ.get("DICOM_NODE_TRITON_VENV", ROOT / ".venv-triton"))
    site = venv / "lib" / "python3.11" / "site-packages"
    base = site / "pytriton" / "tritonserver"
    install = TritonInstall(base / "bin" / "tritonserver", base / "backends", base / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", site)
    for path in (install.server, install.backends / "python" / "libtriton_python.so", install.stub):
        if not path.exists():
            return None, f"Triton server not installed ({path} missing); run: bash tests/peers/setup_triton.sh"
    return install, "ok"


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tensor_block(kind: str, tensors: list) -> str:
    items = [f'  {{\n    name: "{t.name}"\n    data_type: {PB_TYPES[t.dtype]}\n    dims: [ {", ".join(map(str, t.dims))} ]\n  }}' for t in tensors]
    return f"{kind} [\n" + ",\n".join(items) + "\n]"


def config_pbtxt(spec: ModelSpec, delay_us: int = 2000) -> str:
    """Render ``config.pbtxt`` for ``spec`` from the template."""
    template = (HERE / "config.pbtxt.in").read_text(encoding="utf-8")
    return template.format(
        name=spec.name,
        max_batch=spec.tensors.max_batch,
        inputs=_tensor_block("input", spec.tensors.inputs),
        outputs=_tensor_block("output", spec.tensors.outputs),
        delay_us=delay_us,
    )


def write_repository(repo: Path, entries: list[ModelEntry], delay_us: int = 2000) -> Path:
    """Write a Triton model repository serving each entry's ONNX model via the Python backend."""
    for entry in entries:
        version = repo / entry.spec.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (repo / entry.spec.name / "config.pbtxt").write_text(config_pbtxt(entry.spec, delay_us), encoding="utf-8")
        shutil.copyfile(HERE / "model.py", version / "model.py")
        shutil.copyfile(entry.onnx_path, version / "model.onnx")
    return repo


def _replace(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` by rename: a stub still running from a killed server keeps its old file."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


class TritonServer:
    """A tritonserver process on loopback ports; use as a context manager."""

    def __init__(self, install: TritonInstall, repo: Path, workdir: Path) -> None:
        self.install = install
        self.repo = repo
        self.workdir = workdir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.log_path = workdir / "tritonserver.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """``grpc://127.0.0.1:<port>``."""
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def _backend_dir(self) -> Path:
        # The stub must sit next to the Python backend library; copy, never touch the venv.
        backends = self.workdir / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for item in (self.install.backends / "python").iterdir():
            if item.is_file():
                _replace(item, python / item.name)
        _replace(self.install.stub, python / "triton_python_backend_stub")
        return backends

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the server and wait until it and every model are ready."""
        # The copied stub loses its $ORIGIN-relative RUNPATH to the wheel's bundled libraries.
        libs = self.install.site_packages / "nvidia_pytriton.libs"
        ld_path = os.pathsep.join(p for p in (str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p)
        # The embedded interpreter of the stub finds its prefix by looking up python3 on PATH:
        # putting .venv-triton/bin first makes it use that venv's site-packages (numpy<2, onnxruntime).
        venv_bin = self.install.site_packages.parents[2] / "bin"
        path = os.pathsep.join((str(venv_bin), os.environ.get("PATH", "")))
        env = dict(os.environ, PATH=path, LD_LIBRARY_PATH=ld_path, OMP_NUM_THREADS="1")
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        cmd = [
            str(self.install.server),
            f"--model-repository={self.repo}",
            f"--backend-directory={self._backend_dir()}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--allow-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 15 s)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None:
            self._log.close()
        self._proc = None

    @property
    def running(self) -> bool:
        """Whether the server process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server: no graceful shutdown, in-flight requests see the connection drop."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._log.close()
        self._proc = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
