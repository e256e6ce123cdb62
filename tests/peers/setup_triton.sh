#!/usr/bin/env bash
# Create .venv-triton: a separate virtual environment holding nvidia-pytriton,
# whose wheel ships a real `tritonserver` binary and Triton's Python backend.
# It pins numpy<2, which the main .venv cannot share, hence its own venv.
# Idempotent: a complete environment (marker file present) is left as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${DICOM_NODE_TRITON_VENV:-$ROOT/.venv-triton}"
PYTHON="${PYTHON:-python3}"
MARKER="$VENV/.dicom-node-ready"

if [[ -f "$MARKER" ]]; then
    echo "setup_triton: $VENV already set up"
    exit 0
fi

# The backend stub used by the tests is the wheel's python_backend_stubs/3.11 build.
if [[ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "3.11" ]]; then
    echo "setup_triton: $PYTHON is not Python 3.11 (set PYTHON=python3.11)" >&2
    exit 1
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# onnxruntime runs the bundled ONNX models inside the server's Python backend.
"$VENV/bin/python" -m pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime>=1.17,<2"

SERVER_DIR="$("$VENV/bin/python" -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver")')"
if [[ ! -x "$SERVER_DIR/bin/tritonserver" ]]; then
    echo "setup_triton: tritonserver binary not found under $SERVER_DIR" >&2
    exit 1
fi
STUB="$SERVER_DIR/python_backend_stubs/3.11/triton_python_backend_stub"
if ldd "$STUB" | grep -q "libpython3.11.so.1.0 => not found"; then
    echo "setup_triton: the backend stub needs libpython3.11.so.1.0 (apt-get install libpython3.11)" >&2
    exit 1
fi
touch "$MARKER"
echo "setup_triton: ready ($SERVER_DIR/bin/tritonserver)"
