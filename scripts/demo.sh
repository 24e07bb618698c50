#!/usr/bin/env bash
# The tern demo: one device agent, the example services, the sandbox catching broken
# guests, a stateful service whose state survives snapshot → agent crash → restore, and
# calls between services over the three transports (in-process, shared memory, TCP).
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
EXTRA_PIDS=()
cleanup() {
  [[ -n "$AGENT_PID" ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for p in "${EXTRA_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

bold() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '\033[36m$ %s\033[0m\n' "$*"; "$@"; printf '\n'; }
# `tern` with the agent address filled in, shown without it.
t() { printf '\033[36m$ tern %s\033[0m\n' "$*"; "$TERN" "$@" --agent "$AGENT"; local rc=$?; printf '\n'; return $rc; }

start_agent() {
  coproc AGENTPROC { exec "$TERN" agent --port 0 --admin-port 0 --device cpu0 --host-id h1 \
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

bold "6. Calls between services: same code, the transport follows where the callee runs"
# Two more agents: nic0 on the same host as cpu0 (h1: shared memory between them) and
# csd0 on another host (h2: TCP, over an emulated 50 µs / 1 Gbit/s link).
start_extra() {  # DEVICE HOST -> sets EXTRA_ADMIN, EXTRA_FRAMES
  local dev=$1 host=$2 line
  mkdir -p "$WORK/$dev"
  "$TERN" agent --port 0 --admin-port 0 --device "$dev" --host-id "$host" --workers 1 \
    --data-dir "$WORK/$dev" --log-level warn > "$WORK/$dev.out" 2>"$WORK/$dev.log" &
  EXTRA_PIDS+=($!)
  for _ in $(seq 100); do [[ -s "$WORK/$dev.out" ]] && break; sleep 0.1; done
  line=$(head -1 "$WORK/$dev.out")
  EXTRA_FRAMES=$(sed -E 's/.*frames=([0-9]+).*/\1/' <<<"$line")
  EXTRA_ADMIN="127.0.0.1:$(sed -E 's/.*admin=([0-9]+).*/\1/' <<<"$line")"
  echo "agent $dev up on host $host: $line"
}
start_extra nic0 h1; NIC_ADMIN=$EXTRA_ADMIN; NIC_FRAMES=$EXTRA_FRAMES
start_extra csd0 h2; CSD_ADMIN=$EXTRA_ADMIN; CSD_FRAMES=$EXTRA_FRAMES
CPU_FRAMES=$("$TERN" version >/dev/null; curl -s "http://$AGENT/v1/info" | sed -E 's/.*"frame_port":([0-9]+).*/\1/')
RELAY="$ROOT/examples/relay/manifest.yaml"
t deploy "$RELAY" --module "$WASM/relay.wasm" --name front
t deploy "$RELAY" --module "$WASM/relay.wasm" --name here
run "$TERN" deploy "$RELAY" --module "$WASM/relay.wasm" --name nearby --agent "$NIC_ADMIN"
run "$TERN" deploy "$RELAY" --module "$WASM/relay.wasm" --name faraway --agent "$CSD_ADMIN"
cat > "$WORK/locations.yaml" <<YAML
locations:
  - {instance: nearby-1, service: nearby, agent: nic0, host: h1,
     tcp: "127.0.0.1:$NIC_FRAMES", shm: "$WORK/nic0/shm.sock"}
  - {instance: faraway-1, service: faraway, agent: csd0, host: h2,
     tcp: "127.0.0.1:$CSD_FRAMES", shm: "$WORK/csd0/shm.sock"}
  - {instance: here-1, service: here, agent: cpu0, host: h1,
     tcp: "127.0.0.1:$CPU_FRAMES", shm: "$WORK/agent/shm.sock"}
YAML
echo '[{"a": "h1", "b": "h2", "latency": "50us", "bandwidth": "1gbit"}]' > "$WORK/links.json"
for a in "$AGENT" "$NIC_ADMIN" "$CSD_ADMIN"; do
  "$TERN" locations set "$WORK/locations.yaml" --agent "$a" >/dev/null
  "$TERN" locations links "$WORK/links.json" --agent "$a" >/dev/null
done
echo "every agent now knows where the others' instances run:"
t locations ls
echo "front calls each of them with the same code (relay's 'call' handler); per call:"
for target in here nearby faraway; do
  printf '\033[36m$ tern invoke front call "%s|echo|0|hi" --repeat 2000\033[0m   ' "$target"
  case $target in here) echo "(same agent: in-process)";; nearby) echo "(same host: shared memory)";;
                  faraway) echo "(other host: TCP + 50 µs emulated link each way)";; esac
  "$TERN" invoke front call "$target|echo|0|hi" --repeat 2000 --agent "$AGENT" | sed -n 2p
done
echo
echo "a chain across all three tiers: front -> nearby (shm) -> faraway (tcp) -> here (tcp back):"
t invoke front chain "nearby,faraway,here|the reply came back through 3 hops"
echo "calls made by cpu0's guests, per transport:"
curl -s "http://$AGENT/v1/info" | sed -E 's/.*"calls":(\{[^}]*\}).*/\1/'; echo

bold "Done. Next milestones add the emulated datacenter, offload and live migration (see README)."
