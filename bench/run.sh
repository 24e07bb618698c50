#!/usr/bin/env bash
# Runs the benchmark suites against an existing build and writes their reports:
#   foundation  (issue #2)  bench/results/foundation.{json,md}   foundation_bench
#   rpc         (issue #3)  bench/results/rpc.{json,md}          rpc_bench
#   calls       (issue #3)  bench/results/calls.{json,md}        calls_bench
#   cluster                 bench/results/cluster.{json,md}      cluster_bench (wrk, etcd)
#   placement   (issue #5)  bench/results/placement.{json,md}    placement_bench
#   ndp         (issue #5)  bench/results/ndp.{json,md,svg}      ndp_bench (tern up; root
#                                                                 for namespaces and cgroups)
#   migration   (issue #6)  bench/results/migration.{json,md,svg} migration_bench
#   durable     (issue #6)  bench/results/durable.{json,md}      durable_bench
# Builds nothing: build first with
#   ninja -C build/release -j2 foundation_bench rpc_bench calls_bench cluster_bench placement_bench ndp_bench \
#     migration_bench durable_bench
#   (also builds the guests and `tern`)
#
# usage: bench/run.sh BUILD_DIR [--quick] [--out=DIR] [--suites=foundation,rpc,calls,cluster,placement,ndp,migration,durable]
#   --quick     a smoke run (a few seconds per suite; what CI runs once, as ctest tests)
#   --out=DIR   where results go (default: bench/results)
#   --suites=   which suites to run (default: all)
# A full run takes about a minute for foundation, two to three for rpc and about four for
# cluster, about two for ndp (1 GiB dataset), under one for migration (bounded: each
# driver is killed after a time limit), a few seconds for durable.
# Exit code: 0 if every section ran, 1 if one failed (the report says which), 2 on usage.
# See docs/benchmarks.md for what the numbers mean.
set -uo pipefail

usage() {
  echo "usage: $0 BUILD_DIR [--quick] [--out=DIR] [--suites=foundation,rpc,calls,cluster,placement,ndp,migration,durable]" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
BUILD_DIR=$(cd "$1" 2>/dev/null && pwd) || { echo "no build directory '$1'" >&2; exit 2; }
shift
QUICK=()
OUT=""
SUITES="foundation,rpc,calls,cluster,placement,ndp,migration,durable"
LIMIT_INPROC=150
LIMIT_NET=90
LIMIT_RPC=240
LIMIT_CLUSTER=330
LIMIT_PLACEMENT=120
LIMIT_NDP=900
LIMIT_MIGRATION=400
LIMIT_DURABLE=120
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=(--quick); LIMIT_INPROC=40; LIMIT_NET=30; LIMIT_RPC=30; LIMIT_CLUSTER=90; LIMIT_PLACEMENT=60; LIMIT_NDP=140
             LIMIT_MIGRATION=120; LIMIT_DURABLE=60 ;;
    --out=*) OUT=${arg#--out=} ;;
    --suites=*) SUITES=${arg#--suites=} ;;
    *) usage ;;
  esac
done
RUN_FOUNDATION=0
RUN_RPC=0
RUN_CALLS=0
RUN_CLUSTER=0
RUN_PLACEMENT=0
RUN_NDP=0
RUN_MIGRATION=0
RUN_DURABLE=0
IFS=',' read -ra suite_list <<<"$SUITES"
for s in "${suite_list[@]}"; do
  case "$s" in
    foundation) RUN_FOUNDATION=1 ;;
    rpc) RUN_RPC=1 ;;
    calls) RUN_CALLS=1 ;;
    cluster) RUN_CLUSTER=1 ;;
    placement) RUN_PLACEMENT=1 ;;
    ndp) RUN_NDP=1 ;;
    migration) RUN_MIGRATION=1 ;;
    durable) RUN_DURABLE=1 ;;
    *) echo "unknown suite '$s' (foundation, rpc, calls, cluster, placement, ndp, migration, durable)" >&2; usage ;;
  esac
done
[[ $RUN_FOUNDATION == 1 || $RUN_RPC == 1 || $RUN_CALLS == 1 || $RUN_CLUSTER == 1 ||
   $RUN_PLACEMENT == 1 || $RUN_NDP == 1 || $RUN_MIGRATION == 1 || $RUN_DURABLE == 1 ]] || usage

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$BUILD_DIR/bench/foundation/foundation_bench
RPC_BENCH=$BUILD_DIR/bench/rpc/rpc_bench
CALLS_BENCH=$BUILD_DIR/bench/calls/calls_bench
CLUSTER_BENCH=$BUILD_DIR/bench/cluster/cluster_bench
PLACEMENT_BENCH=$BUILD_DIR/bench/placement/placement_bench
NDP_BENCH=$BUILD_DIR/bench/ndp/ndp_bench
MIGRATION_BENCH=$BUILD_DIR/bench/migration/migration_bench
DURABLE_BENCH=$BUILD_DIR/bench/durable/durable_bench
TERN=$BUILD_DIR/src/bin/tern
WASM=$BUILD_DIR/wasm
needed=()
[[ $RUN_FOUNDATION == 1 ]] &&
  needed+=("$BENCH" "$TERN" "$WASM/echo.wasm" "$WASM/counter.wasm" "$WASM/kernels.wasm")
[[ $RUN_RPC == 1 ]] && needed+=("$RPC_BENCH")
[[ $RUN_CALLS == 1 ]] && needed+=("$CALLS_BENCH" "$WASM/relay.wasm")
[[ $RUN_CLUSTER == 1 ]] && needed+=("$CLUSTER_BENCH" "$TERN" "$WASM/echo.wasm" /usr/bin/wrk)
[[ $RUN_PLACEMENT == 1 ]] && needed+=("$PLACEMENT_BENCH")
[[ $RUN_NDP == 1 ]] && needed+=("$NDP_BENCH" "$TERN" "$WASM/ndpscan.wasm")
[[ $RUN_MIGRATION == 1 ]] && needed+=("$MIGRATION_BENCH" "$WASM/counter.wasm")
[[ $RUN_DURABLE == 1 ]] && needed+=("$DURABLE_BENCH" "$WASM/counter.wasm")
for f in "${needed[@]}"; do
  if [[ ! -e $f ]]; then
    echo "missing $f: build first with: ninja -C $BUILD_DIR -j2 foundation_bench rpc_bench calls_bench cluster_bench placement_bench ndp_bench migration_bench durable_bench" \
         "(rpc_bench needs gRPC, cluster_bench wrk and etcd: scripts/setup.sh)" >&2
    exit 2
  fi
done

[[ -n $OUT ]] || OUT=$SRC/bench/results
mkdir -p "$OUT"
rc=0
start=$(date +%s)
written=()

if [[ $RUN_FOUNDATION == 1 ]]; then
  rm -f "$OUT/inproc.json" "$OUT/net.json" "$OUT/agent.log"
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
    echo "foundation: no results were written" >&2
    rc=1
  else
    "$BENCH" --source-dir="$SRC" --report="$OUT/foundation" "${inputs[@]}" || rc=1
    written+=("$OUT/foundation.md")
  fi
fi

if [[ $RUN_RPC == 1 ]]; then
  # Limits, tern and gRPC at 64 B / 4 KiB / 64 KiB, pinned and unpinned; rpc_bench
  # starts (and stops) its own server processes.
  rm -f "$OUT/rpc.json" "$OUT/rpc.md"
  echo "== rpc_bench ${QUICK[*]}" >&2
  timeout --kill-after=5 "$LIMIT_RPC" "$RPC_BENCH" "${QUICK[@]}" --source-dir="$SRC" \
    --out="$OUT" || rc=1
  [[ -s $OUT/rpc.md ]] && written+=("$OUT/rpc.md")
fi

if [[ $RUN_CALLS == 1 ]]; then
  # Guest-to-guest calls per transport, chains and fan-out per placement (one process,
  # three agents).
  rm -f "$OUT/calls.json" "$OUT/calls.md"
  echo "== calls_bench ${QUICK[*]}" >&2
  timeout --kill-after=5 "${LIMIT_CALLS:-240}" "$CALLS_BENCH" "${QUICK[@]}" --wasm-dir="$WASM" \
    --out="$OUT" > /dev/null || rc=1
  [[ -s $OUT/calls.md ]] && written+=("$OUT/calls.md")
fi

if [[ $RUN_CLUSTER == 1 ]]; then
  # Gateway/limit/agent HTTP with wrk, deploying 1000 instances, detecting a dead agent;
  # cluster_bench starts (and kills) its own controller, agents, gateway and etcd.
  rm -f "$OUT/cluster.json" "$OUT/cluster.md"
  echo "== cluster_bench ${QUICK[*]}" >&2
  timeout --kill-after=5 "$LIMIT_CLUSTER" "$CLUSTER_BENCH" "${QUICK[@]}" --source-dir="$SRC" \
    --build-dir="$BUILD_DIR" --out="$OUT" || rc=1
  [[ -s $OUT/cluster.md ]] && written+=("$OUT/cluster.md")
fi

if [[ $RUN_PLACEMENT == 1 ]]; then
  # Pure computation: the placement engine on synthetic clusters (no processes).
  rm -f "$OUT/placement.json" "$OUT/placement.md"
  echo "== placement_bench ${QUICK[*]}" >&2
  timeout --kill-after=5 "$LIMIT_PLACEMENT" "$PLACEMENT_BENCH" "${QUICK[@]}" --source-dir="$SRC" \
    --out="$OUT" > /dev/null || rc=1
  [[ -s $OUT/placement.md ]] && written+=("$OUT/placement.md")
fi

if [[ $RUN_NDP == 1 ]]; then
  # Near-data offload end to end: ndp_bench runs `tern up` of bench/ndp/ndp.yaml (and
  # `tern down` at the end), a dataset on the CSD, queries through the gateway.
  rm -f "$OUT/ndp.json" "$OUT/ndp.md" "$OUT/ndp.svg"
  echo "== ndp_bench ${QUICK[*]}" >&2
  timeout --kill-after=10 "$LIMIT_NDP" "$NDP_BENCH" "${QUICK[@]}" --source-dir="$SRC" \
    --build-dir="$BUILD_DIR" --out="$OUT" || rc=1
  [[ -s $OUT/ndp.md ]] && written+=("$OUT/ndp.md")
fi

if [[ $RUN_MIGRATION == 1 ]]; then
  # Two agents in one process; counter instances of 1-256 MiB migrated under open-loop
  # load, pre-copy and stop-and-copy, with the memcpy and TCP loopback limits. Each agent
  # keeps a warm memory reserve of 640 MiB (`tern agent --memory-reserve-mb`; room for
  # both copies of the 256 MiB instance), as an operator sizes it for the largest
  # instance a device takes; docs/benchmarks.md has the same rows without it.
  RESERVE=(--memory-reserve-mb=640)
  [[ ${#QUICK[@]} -gt 0 ]] && RESERVE=()
  rm -f "$OUT/migration.json" "$OUT/migration.md" "$OUT/migration.svg"
  echo "== migration_bench ${QUICK[*]} ${RESERVE[*]}" >&2
  timeout --kill-after=5 "$LIMIT_MIGRATION" "$MIGRATION_BENCH" "${QUICK[@]}" "${RESERVE[@]}" \
    --source-dir="$SRC" --wasm-dir="$WASM" --out="$OUT" > /dev/null || rc=1
  [[ -s $OUT/migration.md ]] && written+=("$OUT/migration.md")
fi

if [[ $RUN_DURABLE == 1 ]]; then
  # Two agents in one process: `touch 8` on a plain and on a durable counter (its journal
  # on the other agent), with the fdatasync and loopback round-trip limits.
  rm -f "$OUT/durable.json" "$OUT/durable.md"
  echo "== durable_bench ${QUICK[*]}" >&2
  timeout --kill-after=5 "$LIMIT_DURABLE" "$DURABLE_BENCH" "${QUICK[@]}" --source-dir="$SRC" \
    --wasm-dir="$WASM" --out="$OUT" > /dev/null || rc=1
  [[ -s $OUT/durable.md ]] && written+=("$OUT/durable.md")
fi

echo "== done in $(( $(date +%s) - start )) s: ${written[*]:-no reports}" \
     "$([[ $rc -ne 0 ]] && echo '(SOME SECTIONS FAILED)')" >&2
exit $rc
