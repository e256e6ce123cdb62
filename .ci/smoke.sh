#!/usr/bin/env bash
# Smoke step of CI: does a runtime-only install serve?
#
# `make test` installs the test extras, so a module the node imports at run time but
# declares only as a test dependency (httpx, once) passes every test and still crashes
# `make run` on a clean clone. This step catches that: a fresh virtual environment with
# `pip install .` and no extras (a real, non-editable install, so missing package data
# fails too), `dicom-node serve` from the checkout root on free ports, as `make run`
# starts it, then
#   - GET /readyz answers 200 (index, spool, SCP listener and every bundled model ready),
#   - a C-ECHO from DCMTK's echoscu succeeds (PS3.7 9.1.5, Verification SOP Class),
#   - SIGTERM stops the node with exit status 0 within STOP_TIMEOUT seconds.
# Any failure prints the node's log and exits non-zero.
#
# Environment: PYTHON (interpreter for the venv, default python3), READY_TIMEOUT (s, 120),
# STOP_TIMEOUT (s, 30), SMOKE_DIR (scratch folder, default a new mktemp -d, removed at exit).
# pip's cache (PIP_CACHE_DIR or pip's default) is used, not bypassed: with it warm the
# install takes seconds, not the minutes of downloading onnxruntime and numpy again.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

PYTHON=${PYTHON:-python3}
READY_TIMEOUT=${READY_TIMEOUT:-120}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
scratch=${SMOKE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/dicom-node-smoke.XXXXXX")}
mkdir -p "$scratch"
node_pid=""

say() { echo "smoke: $*" >&2; }

cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -KILL "$node_pid" 2>/dev/null || true
  fi
  [ -n "${SMOKE_DIR:-}" ] || rm -rf "$scratch"
}
trap cleanup EXIT

fail() {
  say "FAIL: $*"
  if [ -s "$scratch/node.log" ]; then
    say "node log (last 60 lines):"
    tail -n 60 "$scratch/node.log" >&2
  fi
  exit 1
}

command -v echoscu >/dev/null 2>&1 \
  || fail "DCMTK echoscu not found (bash tests/peers/install_debian_peers.sh installs it)"

say "fresh venv, runtime install only: pip install . (no extras)"
started=$SECONDS
"$PYTHON" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --disable-pip-version-check -q "$root" \
  || fail "pip install . failed"
say "installed in $((SECONDS - started)) s"

# Two free loopback ports, chosen by the kernel (a port taken by another CI job cannot collide).
read -r scp_port api_port < <("$scratch/venv/bin/python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)

# From the checkout root, as `make run` does: conf/node.toml and the bundled engines are used;
# only the ports and the storage root are overridden, so nothing touches the checkout's var/.
say "dicom-node serve: SCP 127.0.0.1:$scp_port, API 127.0.0.1:$api_port, storage $scratch/var"
DICOM_NODE__SCP__PORT=$scp_port \
DICOM_NODE__API__PORT=$api_port \
DICOM_NODE__API__HOST=127.0.0.1 \
DICOM_NODE__STORAGE__ROOT="$scratch/var" \
  "$scratch/venv/bin/dicom-node" serve >"$scratch/node.log" 2>&1 &
node_pid=$!

ready_url="http://127.0.0.1:$api_port/readyz"
deadline=$((SECONDS + READY_TIMEOUT))
code=""
while :; do
  kill -0 "$node_pid" 2>/dev/null || {
    wait "$node_pid" && rc=0 || rc=$?
    node_pid=""
    fail "the node exited with status $rc before it was ready"
  }
  # urllib rather than curl: the venv's Python is there, curl may not be.
  code=$("$scratch/venv/bin/python" - "$ready_url" "$scratch/readyz.json" <<'EOF'
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as rsp:
        body, status = rsp.read(), rsp.status
except urllib.error.HTTPError as exc:
    body, status = exc.read(), exc.code
except OSError:
    body, status = b"", "down"
with open(sys.argv[2], "wb") as out:
    out.write(body)
print(status)
EOF
)
  [ "$code" = 200 ] && break
  [ "$SECONDS" -lt "$deadline" ] \
    || fail "GET /readyz did not answer 200 within ${READY_TIMEOUT}s (last: $code $(cat "$scratch/readyz.json"))"
  sleep 1
done
say "GET /readyz -> 200 $(cat "$scratch/readyz.json")"

echoscu -aet SMOKE_SCU -aec DICOM_NODE -to 10 -ta 10 -td 10 127.0.0.1 "$scp_port" >"$scratch/echo.log" 2>&1 \
  || { cat "$scratch/echo.log" >&2; fail "C-ECHO (echoscu) to 127.0.0.1:$scp_port failed"; }
say "C-ECHO (echoscu) -> Success"

kill -TERM "$node_pid"
deadline=$((SECONDS + STOP_TIMEOUT))
while kill -0 "$node_pid" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "the node did not stop within ${STOP_TIMEOUT}s of SIGTERM"
  sleep 0.5
done
wait "$node_pid" && rc=0 || rc=$?
node_pid=""
[ "$rc" = 0 ] || fail "the node exited with status $rc after SIGTERM (expected 0)"
say "SIGTERM -> exit 0"
say "PASS: a runtime-only install serves ($((SECONDS - started)) s)"
