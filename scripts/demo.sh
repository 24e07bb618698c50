#!/usr/bin/env bash
# The tern demo: one device agent, the example services, the sandbox catching broken
# guests, a stateful service whose state survives snapshot → agent crash → restore; then
# an emulated datacenter (tern up): placement by the controller, HTTP through the
# gateway, calls between services over the three transports (in-process, shared
# memory, TCP), a device failure handled, near-data offload, and live migration of a
# stateful service under load, with nothing lost.
#
#   scripts/demo.sh [BUILD_DIR]      (make demo runs it on build/release)
#
# Everything listens on 127.0.0.1 (or, as root, in network namespaces it creates) on free
# ports and stops when the script ends.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build/release}"
TERN="$BUILD/src/bin/tern"
WASM="$BUILD/wasm"
[[ -x "$TERN" ]] || { echo "demo: $TERN not built (run: make release)"; exit 1; }
WORK="$(mktemp -d /tmp/tern-demo.XXXXXX)"
AGENT_PID=""
EXTRA_PIDS=()
CLUSTER_UP=0
cleanup() {
  [[ $CLUSTER_UP == 1 ]] && "$TERN" down laptop >/dev/null 2>&1
  [[ -n "$AGENT_PID" ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for p in "${EXTRA_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
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

echo "(from step 6 on, the cluster's web dashboard shows everything live: the demo prints its URL)"
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

bold "6. An emulated datacenter: tern up examples/topologies/laptop.yaml"
kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""
export TERN_HOME="$WORK/home"
CLUSTER_UP=1
# Without --agent, deploy/ps/invoke talk to the cluster: the controller places
# instances, the gateway serves HTTP.
c() { printf '\033[36m$ tern %s\033[0m\n' "$*"; "$TERN" "$@"; local rc=$?; printf '\n'; return $rc; }
run "$TERN" topology check "$ROOT/examples/topologies/laptop.yaml"
c up "$ROOT/examples/topologies/laptop.yaml"
GATEWAY=$(sed -nE 's/.*"gateway": "([^"]+)".*/\1/p' "$TERN_HOME/clusters/laptop/cluster.json")
CONTROLLER=$(sed -nE 's/.*"controller": "([^"]+)".*/\1/p' "$TERN_HOME/clusters/laptop/cluster.json")
printf '\033[1;35mwatch it live: http://%s/\033[0m  (the controller'"'"'s dashboard: devices, instances,\n' "$CONTROLLER"
echo "migrations as they happen; open it in a browser on this machine now)"

bold "7. Deploy: the controller places replicas over the devices; the gateway answers HTTP"
c deploy "$ROOT/examples/echo/manifest.yaml" --module "$WASM/echo.wasm" --replicas 3
RELAY="$ROOT/examples/relay/manifest.yaml"
c deploy "$RELAY" --module "$WASM/relay.wasm" --name front --devices cpu0
c deploy "$RELAY" --module "$WASM/relay.wasm" --name here --devices cpu0
c deploy "$RELAY" --module "$WASM/relay.wasm" --name nearby --devices nic0
c deploy "$RELAY" --module "$WASM/relay.wasm" --name faraway --devices csd0
run curl -s -X POST --data "hello over HTTP" "http://$GATEWAY/v1/invoke/echo/echo"
printf '\n'
run curl -s -i -X POST "http://$GATEWAY/v1/invoke/nope/echo"
printf '\n'
c invoke echo echo x --repeat 300

bold "8. Calls between services: same code, the transport follows where the callee runs"
echo "front (on cpu0, host h1) calls each relay with the same code: 300 calls each, timed"
echo "inside the calling guest (relay's 'calls' handler), so only the call itself counts:"
guest_timed() {  # the reply is one little-endian int64 of nanoseconds per call
  od -An -v -t d8 | tr -s ' ' '\n' | grep -v '^$' | sort -n |
    awk '{a[NR]=$1} END {printf "p50 %6.1f us   p99 %7.1f us\n", a[int(NR/2)]/1000, a[int(NR*0.99)]/1000}'
}
for target in here nearby faraway; do
  case $target in here) where="cpu0: same agent -> in-process     ";;
                  nearby) where="nic0: same host h1 -> shared memory";;
                  faraway) where="csd0: host h2 -> TCP, 50 us link  ";; esac
  printf '\033[36m$ tern invoke front calls "300|%s|echo|hi"\033[0m  %s  ' "$target" "$where"
  "$TERN" invoke front calls "300|$target|echo|hi" | guest_timed
done
echo
echo "a chain across all three tiers: front -> nearby (shm) -> faraway (tcp) -> here (tcp back):"
c invoke front chain "nearby,faraway,here|the reply came back through 3 hops"
c ps

bold "9. A device fails: kill cpu1's agent; the controller re-places its replica and restores a durable counter"
# The example's manifest allows 512 MiB (for the benchmarks); the controller reserves what
# a manifest allows, so the demo caps it at 96 MiB.
sed 's/^  memory_mib: .*/  memory_mib: 96/' "$ROOT/examples/counter/manifest.yaml" > "$WORK/counter.yaml"
echo "a durable counter on cpu1: each reply leaves only after the pages the request changed (and"
echo "its reply, for retries) are fdatasync'd in a journal on the storage device csd0 (host h2)"
printf '\033[36m$ tern deploy counter.yaml --module counter.wasm --name ledger --durable --devices cpu1,cpu0\033[0m\n'
DEPLOYED=$("$TERN" deploy "$WORK/counter.yaml" --module "$WASM/counter.wasm" --name ledger --durable --devices cpu1,cpu0)
echo "$DEPLOYED"; echo
# (deploy returned once the first base checkpoint gave the instance its journal's keeper)
[[ $DEPLOYED == *"ledger-1 on cpu1"* ]] || c migrate ledger-1 --to cpu1
c invoke ledger incr 1 --repeat 200
PID=$(sed -nE '/"cpu1"/,/}/s/.*"pid": ([0-9]+).*/\1/p' "$TERN_HOME/clusters/laptop/cluster.json")
run kill -9 "$PID"
for _ in $(seq 300); do
  "$TERN" ps 2>/dev/null | grep -q "agent cpu1 is gone" && "$TERN" ps | grep -q "placed echo-4" &&
    "$TERN" ps | grep -q "restored ledger-1" && break
  sleep 0.1
done
c ps
c invoke echo echo "still answering" 
echo "the durable counter, restored on another device from its journal: all 200 acknowledged increments"
c invoke ledger get
c logs controller --lines 5

bold "10. Near-data offload: a dataset on the CSD, a scan that should go to it, a computation that should not"
python3 - "$WORK/access.log" <<'PY'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for i in range(400000):  # ~10 MB; about 0.1% of the lines are errors
        f.write("%d %s /item/%d %s\n" % (i, random.choice(["GET", "PUT"]), random.randrange(10**6),
                                         "ERROR" if random.random() < 0.001 else "200"))
PY
c data put logs "$WORK/access.log"
# Agents report their datasets with their heartbeats (every second); the controller then
# tells every agent where each dataset is.
for _ in $(seq 50); do "$TERN" ps 2>/dev/null | grep -q "^logs " && break; sleep 0.1; done
sleep 1
echo "the same scan code, pinned to the host CPU (data crosses the 1 Gbit link) and to the CSD:"
c deploy "$ROOT/examples/scan/manifest.yaml" --module "$WASM/scan.wasm" --name scan-host --devices cpu0
c deploy "$ROOT/examples/scan/manifest.yaml" --module "$WASM/scan.wasm" --name scan-csd --devices csd0
for s in scan-host scan-csd; do
  printf '\033[36m$ tern invoke %s count "logs|access.log|ERROR"\033[0m\n' "$s"
  "$TERN" invoke "$s" count "logs|access.log|ERROR"; echo
done
echo
echo "now let the placement engine decide, from the topology and the services' hints"
echo "(scanning these 10 MB takes about 4 ms of a host core, a query every 5 s; crunch: 200 ms):"
c deploy "$ROOT/examples/scan/manifest.yaml" --module "$WASM/scan.wasm" --name scan \
  --policy latency --reads logs=10000000 --cpu-us 4000 --rate 0.2 --cv2 0
c explain scan
c deploy "$ROOT/examples/scan/manifest.yaml" --module "$WASM/scan.wasm" --name crunch \
  --policy latency --reads logs=1000 --cpu-us 200000 --rate 1
c explain crunch
c data ls

bold "11. Live migration: a stateful counter with 32 MiB of state moves while it is called"
# counter.yaml: the example capped at 96 MiB (step 9).
# cpu1 died in step 9: the counter may use the three live devices.
printf '\033[36m$ tern deploy counter.yaml --module counter.wasm --devices cpu0,csd0,nic0\033[0m\n'
DEPLOYED=$("$TERN" deploy "$WORK/counter.yaml" --module "$WASM/counter.wasm" --devices cpu0,csd0,nic0)
echo "$DEPLOYED"; echo
FROM=$(sed -nE 's/.*counter-1 on ([a-z0-9]+).*/\1/p' <<<"$DEPLOYED")
case $FROM in
  csd0) HOP1=cpu0; HOP2=nic0 ;;
  nic0) HOP1=csd0; HOP2=cpu0 ;;
  *) HOP1=csd0; HOP2=nic0 ;;
esac
c invoke counter fill 32768   # 32 MiB of pseudo-random state, checksummed
SUM=$("$TERN" invoke counter check)
echo "load: 400 requests/s for 7 s through the gateway, each adding 1 and rewriting 8 words of"
echo "the state; every request has an idempotency key and is retried with it until answered"
printf '\033[36m$ tern load counter touch 8 --rate 400 --duration-ms 7000 --counter &\033[0m\n'
"$TERN" load counter touch 8 --rate 400 --duration-ms 7000 --counter --quiet > "$WORK/load.txt" 2>&1 &
LOAD_PID=$!
EXTRA_PIDS+=("$LOAD_PID")
sleep 2
echo "$FROM -> $HOP1 -> $HOP2 while the load runs (csd0: the 0.25-core storage device on host h2,"
echo "behind the 50 us / 1 Gbit link; nic0: the SmartNIC of host h1):"
c migrate counter-1 --to "$HOP1"
sleep 2
c migrate counter-1 --to "$HOP2"
LOAD_RC=0
wait "$LOAD_PID" || LOAD_RC=$?
cat "$WORK/load.txt"
echo
echo "the state arrived whole: \`check\` recomputes the checksum over all 32 MiB (it fails if one"
echo "byte differs; the value changed since the fill ($SUM) because every request rewrote words):"
c invoke counter check
c ps | sed -n '/^INSTANCE/,/^$/p'
[[ $LOAD_RC == 0 ]] || { echo "demo: the load generator saw lost requests"; exit 1; }

bold "12. Drain a device: everything on $HOP2 moves off it (the counter with its state)"
c drain "$HOP2" || echo "(an instance pinned to $HOP2 with --devices may run nowhere else: the drain leaves it there and says so)"
c invoke counter get
c down
CLUSTER_UP=0

bold "Done."
