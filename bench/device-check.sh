#!/usr/bin/env bash
# Every GPU figure of dicom-node in one run, as a Markdown table (bench/device_check.py does the work).
#
#   bash bench/device-check.sh [device_check.py options: --slices 64 --batch 16 --repeat 5 --only decode ...]
#
# Prints the table on stdout and, when $OUT is set, writes it to $OUT/device-check.md (the install log
# goes to $OUT/device-check.log, else to the virtual environment). Rows that cannot be measured say
# "not available: <reason>"; the script exits 0 on a machine without a GPU too.
#
# Packages go into their own virtual environment ($DEVICE_CHECK_VENV, default .venv-device), which
# also sees the packages of the interpreter it was made from ($PYTHON, default python3): a GPU image's
# numpy, CUDA libraries and cuda-bindings are used as they are. What does not import is installed:
# from the wheels in .whl/ when that folder holds any (a GPU machine without internet), else from PyPI.
# GPU packages (nvidia-nvimgcodec, onnxruntime-gpu, cuda-python, tensorrt) only when nvidia-smi sees a GPU.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=${DEVICE_CHECK_VENV:-$ROOT/.venv-device}
WHEELS=$ROOT/.whl
LIMIT=${DEVICE_CHECK_TIMEOUT:-540}  # seconds for the measurements; setup comes on top (under a minute from .whl/)
LOG=${OUT:+$OUT/device-check.log}
LOG=${LOG:-$VENV/device-check.log}
NOTES=$(mktemp)
trap 'rm -f "$NOTES"' EXIT

say() { echo "device-check: $*" >&2; }

make_venv() {
    [ -x "$VENV/bin/python" ] && return 0
    "$PYTHON" -m venv "$VENV" 2>/dev/null || "$PYTHON" -m venv --without-pip "$VENV" || return 1
    # The parent interpreter's packages (a venv's too, which --system-site-packages would miss), after ours.
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() + [site.getusersitepackages()] if p))' \
        >"$site/zz-parent-site.pth"
}

pip_install() {  # pip_install NAME...: one at a time, so one failure costs only its own rows
    local source=(--timeout 30 --retries 1) from=PyPI
    compgen -G "$WHEELS/*.whl" >/dev/null && source=(--no-index --find-links "$WHEELS") from=.whl/
    local pip=("$VENV/bin/python" -m pip)
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || pip=("$PYTHON" -m pip --python "$VENV/bin/python")
    for name in "$@"; do
        say "installing $name from $from"
        if ! "${pip[@]}" install --disable-pip-version-check --quiet "${source[@]}" "$name" >>"$LOG" 2>&1; then
            echo "- install: $name could not be installed from $from (see $LOG)" >>"$NOTES"
        fi
    done
}

missing() {  # missing MODULE=PACKAGE...: the packages whose module does not import in the venv
    for pair in "$@"; do
        "$VENV/bin/python" -c "import ${pair%%=*}" >/dev/null 2>&1 || echo "${pair#*=}"
    done
}

cuda_major() {  # the CUDA major version the driver supports, from nvidia-smi's banner
    nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n1
}

if ! make_venv; then
    say "could not create $VENV with $PYTHON; using $PYTHON as it is"
    echo "- install: no virtual environment ($PYTHON -m venv failed); packages as installed" >>"$NOTES"
    VENV=$(dirname "$(dirname "$(command -v "$PYTHON")")")
fi
mkdir -p "$(dirname "$LOG")"
: >>"$LOG"

# What bench/device_check.py imports on every machine (dicom_node is used from the checkout, not installed).
mapfile -t need < <(missing numpy=numpy pydicom=pydicom pydantic=pydantic tqdm=tqdm pylibjpeg=pylibjpeg \
    openjpeg=pylibjpeg-openjpeg libjpeg=pylibjpeg-libjpeg rle=pylibjpeg-rle jpeg_ls=pyjpegls \
    imagecodecs=imagecodecs onnxruntime=onnxruntime)
[ ${#need[@]} -gt 0 ] && pip_install "${need[@]}"

if nvidia-smi -L >/dev/null 2>&1; then
    cu=$(cuda_major); cu=${cu:-12}; [ "$cu" -ge 13 ] && cu=13 || cu=12
    mapfile -t need < <(missing nvidia.nvimgcodec="nvidia-nvimgcodec-cu$cu" cuda.bindings=cuda-python)
    [ ${#need[@]} -gt 0 ] && pip_install "${need[@]}"
    if ! "$VENV/bin/python" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
        pip_install onnxruntime-gpu
    fi
    # Full TensorRT comes from NVIDIA's index, not PyPI: carry its wheels in .whl/ (tensorrt-cu13 and its libs).
    [ -z "$(missing tensorrt=x)" ] || pip_install "tensorrt-cu$cu"
else
    say "no NVIDIA GPU (nvidia-smi lists none): GPU packages not installed, GPU rows will say why"
fi

report=$(mktemp)
timeout "$LIMIT" "$VENV/bin/python" "$ROOT/bench/device_check.py" --notes "$NOTES" --out "$report" "$@" >/dev/null
rc=$?
if [ $rc -ne 0 ] || [ ! -s "$report" ]; then
    why="exit status $rc"; [ $rc -eq 124 ] && why="timed out after ${LIMIT} s"
    printf '# dicom-node device check\n\n| figure | CPU | GPU | GPU vs CPU |\n|---|---|---|---|\n| all | not available: device_check.py failed (%s; see stderr) | not available: device_check.py failed | |\n' \
        "$why" >"$report"
fi
cat "$report"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && cp "$report" "$OUT/device-check.md"
fi
rm -f "$report"
exit 0
