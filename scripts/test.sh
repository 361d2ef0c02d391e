#!/usr/bin/env bash
# The whole test suite from a fresh clone, as CI runs it: system packages, a virtualenv,
# an install FROM THE SDIST (proves the sdist is complete), lint, the C core's own tests,
# a fuzz smoke, then pytest over both backends. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${MESHSTATS_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
step() { printf '\n==> %s  (%ss)\n' "$1" "$SECONDS"; }

step "system packages (prometheus for promtool and the e2e scrape, clang for fuzzing)"
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v clang >/dev/null || need+=(clang)
[ -e /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a ] \
  || ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1 \
  || need+=(libclang-rt-14-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing system packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

step "virtualenv $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip build

step "build the sdist and install meshstats from it, with the test extras and every integration's"
rm -rf dist
"$VENV/bin/python" -m build --sdist --outdir dist . >/dev/null
SDIST=$(ls dist/meshstats-*.tar.gz)
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$SDIST"
"$VENV/bin/python" -m pip install -q "meshstats[test,bench,dev,asgi,wsgi,httpx,aiohttp,grpc] @ file://$ROOT/$SDIST"
"$VENV/bin/python" -c 'import meshstats, sys; print("HAS_EXTENSION =", meshstats.HAS_EXTENSION); sys.exit(0 if meshstats.HAS_EXTENSION else 1)'

step "lint: ruff and mypy --strict"
"$VENV/bin/ruff" check src tests benchmarks
"$VENV/bin/mypy" src

# gcc and clang both: each warns about things the other misses (-Werror). CC=... picks one.
for cc in ${CC:-gcc clang}; do
  step "C core: unit tests under ASan/UBSan, -Werror, built with $cc"
  make -s -C _core test CC="$cc"
done

step "fuzz smoke (libFuzzer, about a minute; log in _core/fuzz/smoke.log)"
if ! make -s -C _core/fuzz smoke > _core/fuzz/smoke.log 2>&1; then
  tail -n 60 _core/fuzz/smoke.log
  exit 1
fi
grep -E '^Done [0-9]+ runs' _core/fuzz/smoke.log || tail -n 3 _core/fuzz/smoke.log

# Run from a directory without src/ on the path, so the installed (sdist) build is what runs.
export PYTHONDONTWRITEBYTECODE=1
step "pytest: compiled and pure-Python backends side by side"
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider

step "pytest: the pure-Python leg (MESHSTATS_NO_EXTENSIONS=1)"
MESHSTATS_NO_EXTENSIONS=1 "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider

step "benchmarks, once each as a smoke test (timings are for 'pytest benchmarks')"
"$VENV/bin/python" -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable

step "done"
