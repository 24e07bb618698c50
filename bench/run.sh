#!/usr/bin/env bash
# Runs the foundation benchmarks (issue #2) against an existing build and writes
# bench/results/foundation.{json,md}. Builds nothing: build first with
#   ninja -C build/release -j2 foundation_bench      (also builds the guests and `tern`)
#
# usage: bench/run.sh BUILD_DIR [--quick] [--out=DIR]
#   --quick     a smoke run (a few seconds; what CI runs once, as a ctest test)
#   --out=DIR   where results go (default: bench/results)
# A full run takes about a minute (bounded: each driver is killed after a time limit).
# Exit code: 0 if every section ran, 1 if one failed (the report says which), 2 on usage.
# See docs/benchmarks.md for what the numbers mean.
set -uo pipefail

usage() {
  echo "usage: $0 BUILD_DIR [--quick] [--out=DIR]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
BUILD_DIR=$(cd "$1" 2>/dev/null && pwd) || { echo "no build directory '$1'" >&2; exit 2; }
shift
QUICK=()
OUT=""
LIMIT_INPROC=150
LIMIT_NET=90
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=(--quick); LIMIT_INPROC=40; LIMIT_NET=30 ;;
    --out=*) OUT=${arg#--out=} ;;
    *) usage ;;
  esac
done

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$BUILD_DIR/bench/foundation/foundation_bench
TERN=$BUILD_DIR/src/bin/tern
WASM=$BUILD_DIR/wasm
for f in "$BENCH" "$TERN" "$WASM/echo.wasm" "$WASM/counter.wasm" "$WASM/kernels.wasm"; do
  if [[ ! -e $f ]]; then
    echo "missing $f: build first with: ninja -C $BUILD_DIR -j2 foundation_bench" >&2
    exit 2
  fi
done

[[ -n $OUT ]] || OUT=$SRC/bench/results
mkdir -p "$OUT"
rm -f "$OUT/inproc.json" "$OUT/net.json" "$OUT/agent.log"
rc=0
start=$(date +%s)

# 1-4 share one process (one V8 engine per process); 5 runs the client side in a
# process of its own, against the real `tern agent` binary as a child.
echo "== foundation_bench: invoke, instantiate, snapshot, kernels ${QUICK[*]}" >&2
timeout --kill-after=5 "$LIMIT_INPROC" "$BENCH" "${QUICK[@]}" \
  --sections=invoke,instantiate,snapshot,kernels \
  --source-dir="$SRC" --wasm-dir="$WASM" --json="$OUT/inproc.json" || rc=1

echo "== foundation_bench: net ${QUICK[*]}" >&2
timeout --kill-after=5 "$LIMIT_NET" "$BENCH" "${QUICK[@]}" --sections=net \
  --source-dir="$SRC" --wasm-dir="$WASM" --tern="$TERN" --agent-log="$OUT/agent.log" \
  --json="$OUT/net.json" || rc=1

inputs=()
for f in "$OUT/inproc.json" "$OUT/net.json"; do
  [[ -s $f ]] && inputs+=("$f")
done
if [[ ${#inputs[@]} -eq 0 ]]; then
  echo "no results were written" >&2
  exit 1
fi
"$BENCH" --source-dir="$SRC" --report="$OUT/foundation" "${inputs[@]}" || rc=1

echo "== done in $(( $(date +%s) - start )) s: $OUT/foundation.md, $OUT/foundation.json" \
     "$([[ $rc -ne 0 ]] && echo '(SOME SECTIONS FAILED)')" >&2
exit $rc
