#!/usr/bin/env bash
# Fetch the published OHIF viewer (@ohif/app's built dist/, about 50 MB packed, 200 MB unpacked)
# with npm into a cache outside the checkout, once per version. Never fails: without npm (or the
# registry) the OHIF test skips with the reason, or fails when DICOM_NODE_REQUIRE_PEERS=1.
# Prints nothing when the viewer is already there. Used by `make peers` and `make viewer`.
set -u
version="${OHIF_VERSION:-3.13.2}"
cache="${DICOM_NODE_CACHE:-$HOME/.cache/dicom-node}/ohif-$version"
[ -f "$cache/package/dist/index.html" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "peers: npm not found; the OHIF viewer test will skip (install Node.js and npm)" >&2; exit 0
fi
mkdir -p "$cache"
echo "peers: fetching @ohif/app@$version into $cache" >&2
if (cd "$cache" && npm pack --silent "@ohif/app@$version" >/dev/null 2>&1 && tar xzf "ohif-app-$version.tgz" && rm -f "ohif-app-$version.tgz"); then
  exit 0
fi
echo "peers: npm pack @ohif/app@$version failed" >&2
rm -rf "$cache"
exit 0
