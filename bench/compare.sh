#!/usr/bin/env bash
# Before/after in one run: each benchmark runs on an earlier commit and on the
# working tree, one after the other, so both see the same machine state.
#
#   bash bench/compare.sh BASE_REV [BENCH...]        BENCH: ingest api results (default: all three)
#
# BASE_REV is checked out into a temporary git worktree; both sides use this
# checkout's .venv, the base side with PYTHONPATH pointing at the worktree (the
# scripts put their own checkout first on sys.path, and `dicom-node` started by
# a script imports from PYTHONPATH before the editable install). Each script
# prints its own table of medians; compare rows of the same name.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/compare.sh BASE_REV [ingest|api|results ...]}
shift
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(ingest api results)
py=.venv/bin/python
# Each script's arguments; override with INGEST_ARGS, API_ARGS, RESULTS_ARGS.
declare -A args=([ingest]="${INGEST_ARGS:---repeats 5}" [api]="${API_ARGS:---requests 128}" [results]="${RESULTS_ARGS:---repeats 3}")
tree=$(mktemp -d /tmp/dicom-node-base.XXXXXX)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git worktree add --detach -q "$tree" "$base"
echo "# before: $(git -C "$tree" log -1 --format='%h %s' | cut -c1-80)"
echo "# after:  $(git log -1 --format='%h %s' | cut -c1-80)$(git diff --quiet || echo ' (+ uncommitted changes)')"
for b in "${benches[@]}"; do
  for side in before after; do
    echo
    echo "## $b, $side"
    if [ "$side" = before ]; then
      (cd "$tree" && PYTHONPATH="$tree" "$OLDPWD/$py" "bench/$b.py" ${args[$b]})
    else
      "$py" "bench/$b.py" ${args[$b]}
    fi
  done
done
