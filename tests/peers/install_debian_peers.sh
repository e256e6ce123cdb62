#!/usr/bin/env bash
# Install the Debian packages that give the tests real DICOM peers, when this
# machine allows it (root or passwordless sudo, apt-get present). Never fails:
# tests needing a missing peer skip with the reason, or fail when
# DICOM_NODE_REQUIRE_PEERS=1 (as in CI).
set -u
missing=""
command -v storescu >/dev/null 2>&1 || missing="$missing dcmtk"
command -v dciodvfy >/dev/null 2>&1 || missing="$missing dicom3tools"
command -v Orthanc >/dev/null 2>&1 || missing="$missing orthanc"
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$missing orthanc-dicomweb"
# The browser that renders /docs (and, later, the OHIF viewer) in the browser tests.
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
# `haproxy -c` checks the load balancer config of deploy/ (tests/test_deploy_manifests.py).
command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
# PostgreSQL 15 for the PostgreSQL backend's tests and pass (tests/pg_peer.py runs its own throwaway cluster).
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$missing postgresql-15"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "peers: apt-get not found; install$missing yourself" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "peers: not root and no passwordless sudo; install$missing yourself" >&2; exit 0
  fi
fi
echo "peers: installing$missing" >&2
$SUDO apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null 2>&1 \
  || echo "peers: apt-get install$missing failed" >&2
exit 0
