#!/usr/bin/env bash
# `make test`: the whole suite on the embedded SQLite index and, at the same time, its PostgreSQL pass
# (DICOM_NODE_TEST_BACKEND=postgresql: the tests whose node stores something, again with the index on a
# throwaway PostgreSQL; tests/pg_peer.py). Most of each pass waits on peers, nodes and timers rather than
# computing, so on a 2-core CI machine the two together take little longer than the longer one alone.
# The PostgreSQL pass writes to a log, shown in full when it fails (its summary otherwise).
# Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
log=$(mktemp "${TMPDIR:-/tmp}/dicom-node-pytest-postgresql.XXXXXX")
DICOM_NODE_TEST_BACKEND=postgresql "$PY" -m pytest -p no:cacheprovider -rfE "$@" >"$log" 2>&1 &
pg=$!
trap 'kill "$pg" 2>/dev/null' INT TERM
"$PY" -m pytest "$@"
sqlite=$?
wait "$pg"
postgresql=$?
echo "==== PostgreSQL pass (exit $postgresql) ===="
if [ "$postgresql" -ne 0 ]; then cat "$log"; else tail -n 5 "$log"; fi
rm -f "$log"
echo "==== SQLite pass exit $sqlite, PostgreSQL pass exit $postgresql ===="
[ "$sqlite" -eq 0 ] && [ "$postgresql" -eq 0 ]
