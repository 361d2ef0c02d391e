#!/usr/bin/env bash
# Run tests repeatedly while busy loops load every core, on both backends, and count failures:
# the proof that no test depends on how fast the machine is.
#
#   bash scripts/under_load.sh                    # 20 rounds of the `timing` tests, 2 busy loops
#   ROUNDS=5 LOAD=4 bash scripts/under_load.sh tests -m "not e2e"   # any pytest arguments
#   ROUNDS=10 bash scripts/under_load.sh tests/test_proxy_http.py
#
# Each round runs pytest twice: the compiled and pure backends side by side (the `backend`
# fixture), then again with MESHSTATS_NO_EXTENSIONS=1. Logs of failed rounds stay in
# $LOGS (default /tmp/meshstats-under-load). Exit status 1 when any round failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROUNDS=${ROUNDS:-20}
LOAD=${LOAD:-2}
LOGS=${LOGS:-/tmp/meshstats-under-load}
[ $# -gt 0 ] || set -- tests -m timing
mkdir -p "$LOGS"
export PYTHONDONTWRITEBYTECODE=1

pids=()
for _ in $(seq "$LOAD"); do
  yes > /dev/null &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT

failed=0
for round in $(seq "$ROUNDS"); do
  for leg in both pure; do
    log="$LOGS/round-$round-$leg.log"
    if [ $leg = pure ]; then
      MESHSTATS_NO_EXTENSIONS=1 "$PY" -m pytest -q -p no:cacheprovider "$@" > "$log" 2>&1
    else
      "$PY" -m pytest -q -p no:cacheprovider "$@" > "$log" 2>&1
    fi
    status=$?
    summary=$(tail -n 1 "$log")
    if [ $status -ne 0 ]; then
      failed=$((failed + 1))
      printf 'round %2d %-4s FAILED: %s (log: %s)\n' "$round" "$leg" "$summary" "$log"
      grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /'
    else
      printf 'round %2d %-4s %s\n' "$round" "$leg" "$summary"
      rm -f "$log"
    fi
  done
done
echo "$failed of $((2 * ROUNDS)) pytest runs failed, with $LOAD busy loops on $(nproc) cores"
[ $failed -eq 0 ]
