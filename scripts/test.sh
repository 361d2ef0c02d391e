#!/usr/bin/env bash
# The whole test suite from a fresh clone, as CI runs it: system packages, a virtualenv,
# an install FROM THE SDIST (proves the sdist is complete), lint, the C core's own tests,
# a fuzz smoke, then pytest over both backends. Usage: bash scripts/test.sh
#
# Without root (a contributor's machine): missing system packages cannot be installed, so
# what needs them is left out and named at the start and at the end (exit status 0 only if
# everything that ran passed). MESHSTATS_SKIP_SYSTEM=1 does the same as root. CI runs as
# root and never sets it, so CI still installs and runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${MESHSTATS_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
step() { printf '\n==> %s  (%ss)\n' "$1" "$SECONDS"; }

step "system packages (prometheus for promtool and the e2e scrape, clang for fuzzing, libatomic1)"
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v clang >/dev/null || need+=(clang)
[ -e /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a ] \
  || ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1 \
  || need+=(libclang-rt-14-dev)
# The pure-Python backend's shared stores take their atomics from libatomic (through ctypes).
ldconfig -p 2>/dev/null | grep -q 'libatomic\.so\.1 ' || need+=(libatomic1)
# Debian/Ubuntu ship `python3 -m venv` in a package of its own.
"$PY" -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
skipped=()
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && [ "${MESHSTATS_SKIP_SYSTEM:-0}" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  else
    case " ${need[*]} " in *" python3-venv "*)
      echo "python3 -m venv needs: sudo apt-get install python3-venv" >&2; exit 1;; esac
    command -v promtool >/dev/null || skipped+=("the e2e tests (pytest -m e2e: need prometheus)")
    command -v clang >/dev/null || skipped+=("the C core's tests built with clang")
    case " ${need[*]} " in *" libatomic1 "*)
      echo "the pure backend's shared-store tests need libatomic1: they will fail" >&2;; esac
    case " ${need[*]} " in *" clang "*|*" libclang-rt-14-dev "*)
      skipped+=("the libFuzzer smoke (needs clang and libclang-rt-14-dev)");; esac
    echo "not root: not installing ${need[*]} (sudo apt-get install ${need[*]} runs all)." >&2
    [ ${#skipped[@]} -eq 0 ] || printf 'will NOT run: %s\n' "${skipped[@]}" >&2
  fi
fi
has() { case " ${skipped[*]} " in *"$1"*) return 1;; esac; }

step "virtualenv $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip build

step "build the sdist and install meshstats from it, with the test extras and every integration's"
# A stale egg-info lists generated .c files, which the sdist would then ship.
rm -rf dist src/*.egg-info
"$VENV/bin/python" -m build --sdist --outdir dist . >/dev/null
SDIST=$(ls dist/meshstats-*.tar.gz)
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$SDIST"
"$VENV/bin/python" -m pip install -q "meshstats[test,bench,dev,asgi,wsgi,httpx,aiohttp,grpc,uvloop] @ file://$ROOT/$SDIST"
"$VENV/bin/python" -c 'import meshstats, sys; print("HAS_EXTENSION =", meshstats.HAS_EXTENSION); sys.exit(0 if meshstats.HAS_EXTENSION else 1)'

step "lint: ruff and mypy --strict"
"$VENV/bin/ruff" check src tests benchmarks
"$VENV/bin/mypy" src

# gcc and clang both: each warns about things the other misses (-Werror). CC=... picks one.
compilers=${CC:-gcc clang}
has "built with clang" || compilers=${compilers//clang/}
for cc in $compilers; do
  step "C core: unit tests under ASan/UBSan, -Werror, built with $cc"
  make -s -C _core test CC="$cc"
done

if has "libFuzzer smoke"; then
  step "fuzz smoke (libFuzzer, about a minute; log in _core/fuzz/smoke.log)"
  if ! make -s -C _core/fuzz smoke > _core/fuzz/smoke.log 2>&1; then
    tail -n 60 _core/fuzz/smoke.log
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' _core/fuzz/smoke.log || tail -n 3 _core/fuzz/smoke.log
fi
# Without promtool the e2e tests are deselected (they would fail, by design, not skip).
select=()
has "e2e tests" || select=(-m "not e2e")

# Run from a directory without src/ on the path, so the installed (sdist) build is what runs.
export PYTHONDONTWRITEBYTECODE=1
step "pytest: compiled and pure-Python backends side by side"
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "${select[@]}"

step "pytest: the pure-Python leg (MESHSTATS_NO_EXTENSIONS=1)"
MESHSTATS_NO_EXTENSIONS=1 "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "${select[@]}"

# The sidecar's behaviour tests on uvloop's event loop (the sidecar's default when installed).
# The HTTP/1.1 (upgrades, pipelining, 100-continue, the waits the downstream's protocol
# interrupts, and the requests relayed in the protocols' callbacks included) and TCP relays,
# and peers that go away (where the two loops differed): about 25 s;
# `pytest --event-loop uvloop tests/test_proxy_*.py` runs them all.
step "pytest: the sidecar on uvloop (HTTP/1.1 and TCP relays, downstream faults)"
"$VENV/bin/python" -m pytest tests/test_proxy_http.py tests/test_proxy_h1.py \
  tests/test_proxy_http_direct.py \
  tests/test_proxy_tcp.py tests/test_proxy_downstream.py tests/test_loop.py \
  -q -p no:cacheprovider --event-loop uvloop

step "benchmarks, once each as a smoke test (timings are for 'pytest benchmarks')"
"$VENV/bin/python" -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable

step "done"
if [ ${#skipped[@]} -gt 0 ]; then
  printf 'did NOT run (missing system packages): %s\n' "${skipped[@]}"
fi
