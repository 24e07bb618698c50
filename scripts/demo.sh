#!/usr/bin/env bash
# The tern demo: one device agent, the example services, the sandbox catching broken
# guests, and a stateful service whose state survives snapshot → agent crash → restore.
#
#   scripts/demo.sh [BUILD_DIR]      (make demo runs it on build/release)
#
# Everything listens on 127.0.0.1 on free ports and stops when the script ends.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build/release}"
TERN="$BUILD/src/bin/tern"
WASM="$BUILD/wasm"
[[ -x "$TERN" ]] || { echo "demo: $TERN not built (run: make release)"; exit 1; }
WORK="$(mktemp -d /tmp/tern-demo.XXXXXX)"
AGENT_PID=""
cleanup() {
  [[ -n "$AGENT_PID" ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

bold() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '\033[36m$ %s\033[0m\n' "$*"; "$@"; printf '\n'; }
# `tern` with the agent address filled in, shown without it.
t() { printf '\033[36m$ tern %s\033[0m\n' "$*"; "$TERN" "$@" --agent "$AGENT"; local rc=$?; printf '\n'; return $rc; }

start_agent() {
  coproc AGENTPROC { exec "$TERN" agent --port 0 --admin-port 0 --device cpu0 \
                       --data-dir "$WORK/agent" --log-level warn; }
  AGENT_PID=$AGENTPROC_PID
  read -r line <&"${AGENTPROC[0]}"
  AGENT="127.0.0.1:$(sed -E 's/.*admin=([0-9]+).*/\1/' <<<"$line")"
  echo "agent cpu0 up (pid $AGENT_PID): $line"
}

bold "1. Start an agent for device cpu0 (V8 isolates on $(nproc) workers; data in $WORK/agent)"
start_agent

bold "2. Deploy the example services (wasm32-wasi modules built with clang-19)"
for s in echo counter wordcount kernels; do
  t deploy "$ROOT/examples/$s/manifest.yaml" --module "$WASM/$s.wasm"
done

bold "3. Call them over the frame protocol"
t invoke echo echo "hello, disaggregated world"
t invoke counter incr 40
t invoke counter incr 2
printf '\033[36m$ tern invoke wordcount count - < README.md\033[0m\n'
"$TERN" invoke wordcount count - --agent "$AGENT" < "$ROOT/README.md"; printf '\n\n'
t invoke echo nop --repeat 20000

bold "4. The sandbox: a deliberately broken service; each failure is contained and rolled back"
t deploy "$ROOT/src/agent/testdata/faulty.yaml" --module "$WASM/guest_faulty.wasm"
t invoke faulty incr
for h in incr_then_loop incr_then_recurse incr_then_oob incr_then_oom; do
  t invoke faulty "$h" || true
done
echo "state after four failed requests (each had added 1000 before failing):"
t invoke faulty get
t ps

bold "5. State that survives: snapshot the counter, crash the agent (SIGKILL), restart, restore"
t snapshot counter-1 -o "$WORK/counter.snap"
run kill -9 "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true
AGENT_PID=""
start_agent
echo "services came back from the data dir, with fresh instances:"
t invoke counter get
t restore counter-1 "$WORK/counter.snap"
t invoke counter incr

bold "Done. Next milestones add the emulated datacenter, offload and live migration (see README)."
