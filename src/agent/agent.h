// Agent: one device's runtime. Holds deployed services (manifest + compiled module),
// runs their instances on worker threads, serves invocations, and snapshots/restores
// instances. The network front ends (agent_server.h) and tests drive it through this
// class; it does no I/O of its own besides its data directory.
//
// Ownership: the Agent owns its workers, their isolates and all instances; it borrows
// the Engine (which must outlive it).
//
// Threading: every public method may be called from any thread. Each instance lives on
// exactly one worker thread, which runs its requests one at a time (actor semantics);
// Invoke() queues the request there and calls `done` on that worker thread. Methods
// that touch an instance's memory (Snapshot, Restore, Start) post to its worker and
// wait. Locks: `mu_` guards the routing tables only; it is never held while a guest
// runs or while waiting for a worker.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/migration_wire.h"  // JournalKeeper, DedupEntry
#include "agent/partition.h"
#include "core/manifest.h"
#include "dataplane/link.h"
#include "dataplane/location.h"
#include "dataplane/picker.h"
#include "core/mutex.h"
#include "core/status.h"
#include "transport/frame.h"
#include "transport/socket.h"
#include "wasm/engine.h"
#include "wasm/snapshot.h"

namespace tern::storage {
class DatasetStore;
class JournalStore;
}

namespace tern::transport {
class Doorbell;
class ShmConnection;
}  // namespace tern::transport

namespace tern::agent {

class MemoryReserve;
class MigSlots;
class OutChannel;
struct DedupEntry;

struct AgentOptions {
  std::string device = "dev0";           // this agent's device name
  std::string data_dir;                  // services and snapshots persist here; "" = nowhere
  int workers = 2;                       // worker threads, each with its own isolate
  size_t max_queue_per_instance = 1024;  // beyond: kResourceExhausted (back off)

  // The data plane (calls between services).
  std::string host = "local";  // the (emulated) host this agent runs on
  // Where other agents reach this one; set by AgentServer once it listens. They go into
  // the location entries of this agent's own instances.
  std::string tcp_address;  // "ip:port" of the frame server
  std::string shm_path;     // Unix socket of the shared-memory listener
  // Which transport guests' calls take: auto (the fastest the locations allow) or a
  // forced tier, for benchmarks and debugging.
  dataplane::TierPolicy tier_policy = dataplane::TierPolicy::kAuto;
  // Deadline of a call whose caller has none and gives no timeout.
  int64_t call_timeout_ns = 30'000'000'000;

  // Where this device keeps its datasets (storage/dataset_store.h); "" = <data_dir>/datasets,
  // or none without a data dir (reads then go to other devices).
  std::string datasets_dir;

  // Resource partitioning (agent/partition.h): the device's cores and the share of them
  // reserved for its main task (serving datasets). With reserved > 0 and cgroup v1, the
  // guest workers go into a child cgroup limited to (1 - reserved) x cores.
  double cores = 0;
  double reserved = 0;
  std::string cgroup_root = "/sys/fs/cgroup";

  // Durable instances (manifest `durable`): how long a request waits for its keeper to
  // acknowledge its journal record before it is rolled back and fails (kUnavailable).
  int64_t journal_timeout_ns = 2'000'000'000;

  // Warm memory kept faulted in for incoming migrations (agent/memory_reserve.h): the
  // target moves it under the instance's memory and its rollback point instead of
  // faulting fresh pages in. 0 = none (the library default; `tern agent` keeps 128 MiB).
  uint64_t memory_reserve_bytes = 0;
};

// Where a dataset is kept: the agent that serves it and how to reach it.
struct DatasetLocation {
  std::string dataset;
  std::string agent;
  std::string host;
  std::string tcp;
  std::string shm;
  bool operator==(const DatasetLocation&) const = default;
};

// Dataset bytes read by an instance's guests (tern_data_read), by where they came from.
struct DataCounters {
  uint64_t reads = 0;
  uint64_t local_bytes = 0;   // from this device's store
  uint64_t remote_bytes = 0;  // fetched from another device over the data plane
};

struct InvokeRequest {
  std::string service;
  std::string handler;
  std::string payload;
  std::string instance;  // a specific instance, or "" to let the agent choose
  uint64_t request_id = 0;  // per hop: matches a reply to its request on one connection
  std::string tenant;
  // End to end: the id of the outside request this call serves (set by the gateway or
  // the client, inherited by every nested tern_call); 0 = none: the agent starts a
  // trace with a fresh id when it runs the request.
  uint64_t trace_id = 0;
  // One logical call across retries (the caller reuses it when it retries); an instance
  // answers a key it has already answered from its dedup table instead of running the
  // request again (exactly-once across migrations, issue #6). 0 = no deduplication.
  // A guest's nested call gets DeriveCallKey(this key, ...) (core/ids.h).
  uint64_t idempotency_key = 0;
  // Monotonic deadline (MonoNanos()); 0 = none. A request still queued at its deadline
  // fails with kDeadlineExceeded without running: its caller has given up on it.
  int64_t deadline_ns = 0;
  // When this agent received it (MonoNanos(): the kernel's receive time of its frame,
  // or when it was queued); 0 = when it starts running. Its latency (the SLO's measure)
  // counts from here.
  int64_t received_ns = 0;
  // The caller takes a reply that stays in the guest's memory (InvokeResult::reply_view)
  // and is done with its bytes when its `done` returns (sent, or copied). Only the
  // agent's own serving paths (TCP, shared memory) ask for it.
  bool reply_view_ok = false;
  // The payload when it was left where it arrived instead of in `payload` (then empty):
  // the shared-memory serving path's large requests, in the connection's ring (or a
  // large message's mapping) until the request has been served where it was read.
  // The peer may still write those bytes: the guest reads them once (tern_request_read,
  // into its own memory); nothing the agent relies on is taken from them. Any path that
  // keeps the request longer (a queue, a held or forwarded request) calls OwnPayload().
  std::string_view borrowed_payload;

  std::string_view Payload() const {
    return borrowed_payload.data() != nullptr ? borrowed_payload : std::string_view(payload);
  }
  size_t PayloadSize() const { return Payload().size(); }
  // Copies a borrowed payload into `payload` (no-op if it is there already).
  void OwnPayload() {
    if (borrowed_payload.data() == nullptr) return;
    payload.assign(borrowed_payload.data(), borrowed_payload.size());
    borrowed_payload = {};
  }
};

struct InvokeResult {
  Status status;
  std::string reply;
  std::string instance;  // who served it
  int64_t exec_ns = 0;   // time inside the guest
  // With InvokeRequest::reply_view_ok, a reply the guest left in its linear memory
  // (tern_reply_in_place) instead of `reply` (then empty): valid only until `done`
  // returns (the instance runs nothing before that). Never set otherwise.
  std::string_view reply_view;
};

struct InstanceStatus {
  std::string id;
  std::string service;
  int worker = 0;
  uint64_t requests = 0;
  uint64_t failures = 0;
  uint64_t rollbacks = 0;
  uint64_t expired = 0;
  uint64_t memory_bytes = 0;
  uint64_t pages_copied = 0;  // 4 KiB pages copied to keep the rollback point
  bool dirty_tracking = false;
  uint64_t deduplicated = 0;  // requests answered from the dedup table (retries)
  uint64_t queued = 0;
  int64_t exec_ns_total = 0;
  // CPU time of the worker thread while it ran this instance's requests
  // (CLOCK_THREAD_CPUTIME_ID), less the time it spent waiting for calls and remote
  // dataset reads (spinning, other requests served meanwhile). Measured for one
  // request in 16 and after long ones; short requests in between are charged their
  // wall time times the CPU/wall ratio measured (the clock read is a system call).
  int64_t cpu_ns_total = 0;
  uint64_t reply_bytes_total = 0;  // reply payload bytes of successful requests
  // Each request's latency at this agent (arrival to reply ready: queue wait, guest,
  // commit), cumulative, as (bucket, count) of the buckets that are not empty
  // (core/latency_histogram.h): the controller takes an interval's p99 from two reports.
  std::vector<std::pair<int, uint64_t>> latency_hist;
  std::string last_error;
  uint64_t last_trace_id = 0;  // of the last request it served (0 = none yet)
  uint64_t last_idempotency_key = 0;
  DataCounters data;
  // Durable instances: the keepers of its journal that get its records (none = none
  // assigned yet) and those that dropped out (failed while the other acknowledged), the
  // last record number used, and the appends so far.
  bool durable = false;
  std::vector<std::string> keepers, keepers_out;
  uint64_t journal_seq = 0;
  uint64_t journal_appends = 0;
  uint64_t journal_failures = 0;   // requests rolled back: their record was not acknowledged
  uint64_t journal_full = 0;       // records that carried every page
  uint64_t journal_bytes = 0;      // record bytes sent
  int64_t journal_ns_total = 0;    // time waiting for acknowledgements
  // Replies sent while fewer than kJournalCopies keepers held their record (a keeper
  // dropped out, or only one is assigned): durable against one device's death, not two.
  uint64_t journal_degraded = 0;
};

// How many keepers a durable instance's journal is meant to be on: a reply waits for
// every keeper assigned (the controller assigns this many when it can).
inline constexpr size_t kJournalCopies = 2;

struct ServiceStatus {
  Manifest manifest;
  std::string module_hash;
  uint64_t module_bytes = 0;
  std::vector<std::string> instances;
};

struct AgentStatus {
  std::string device;
  int workers = 0;
  size_t cached_modules = 0;
  std::vector<ServiceStatus> services;
  std::vector<InstanceStatus> instances;
};

// Limits of a TCP frame connection owned by a worker (Agent::AdoptTcpConnection); the
// same roles as transport::internal::SocketLimits of the loop-served frame server.
struct TcpConnLimits {
  // Frames with a larger payload close the connection (after a kError frame).
  uint32_t max_payload_bytes = transport::kMaxPayloadBytes;
  // Reading pauses while more than this waits to be sent: a peer that pipelines
  // requests but does not read its replies is slowed down by TCP flow control.
  size_t pause_reading_output_bytes = 4u << 20;
  // A reply that would queue more than this (with output already waiting) closes the
  // connection.
  size_t max_output_bytes = 128u << 20;
  // Output waiting and not one byte of it taken by the peer for this long: closed.
  int64_t write_stall_ns = 30'000'000'000;
  // How long a connection closed for malformed input keeps discarding what the peer
  // still sends, so that the kError frame reaches it instead of a reset.
  int64_t linger_ns = 2'000'000'000;
};

// Counters of the worker-owned TCP frame connections (GET /v1/info).
// Requests on the shared-memory connections the workers serve.
struct ShmServingStats {
  // Large requests read by the guest straight from the connection's shared memory
  // (served where they were read), and those copied out of it first because they had
  // to wait (queued to another worker or behind a busy, frozen or moving instance).
  uint64_t requests_in_place = 0;
  uint64_t requests_copied = 0;
};

struct TcpConnStats {
  uint64_t accepted = 0;          // handed to workers, ever
  uint64_t open = 0;              // now
  uint64_t moved = 0;             // moved to the worker of their service at the first invoke
  uint64_t closed_malformed = 0;  // closed for malformed input
  uint64_t closed_slow = 0;       // closed because the peer did not read its replies
  uint64_t output_bytes = 0;      // replies waiting to be sent, over all connections, now
};

// Live migration of one instance to another agent (issue #6, docs/design/migration.md).
struct MigrateOptions {
  std::string to_tcp;     // the target agent's frame address, "ip:port"
  std::string to_device;  // its device name (for reports and errors)
  // Pre-copy: copy the memory while the instance serves, then rounds of the pages
  // dirtied meanwhile, then freeze and send the rest. Stop-and-copy: freeze first and
  // send everything (the naive baseline).
  bool precopy = true;
  int max_rounds = 8;
  // Pre-copy freezes once a round leaves at most this many dirty 4 KiB pages (or the
  // dirty set stops shrinking, or max_rounds is reached).
  uint32_t stop_pages = 256;
  // How long to wait for a request boundary (a request waiting in a nested call
  // delays the freeze); then the migration fails with kDeadlineExceeded and the
  // instance keeps serving here.
  int64_t freeze_timeout_ns = 5'000'000'000;
  // Page compression: "auto" (LZ4 when link_bps says the link is slower than LZ4
  // compresses, ~2 Gbit/s here), "lz4" or "none".
  std::string codec = "auto";
  uint64_t link_bps = 0;  // 0 = unknown: assume a fast link
  // How the pages travel (docs/design/migration.md, "Same-host migration through shared
  // memory"): "shm" through slots of shared memory the target hands over on its
  // `<shm socket>.mig` socket (the migration connection then carries a 16-byte frame per
  // 4 MiB batch), "tcp" in the frames of the migration connection, "auto" shm when the
  // target is on this agent's host and its slot socket can be reached, else tcp (the
  // report says why: transport_note). shm when it cannot be had fails the migration
  // (kFailedPrecondition / kUnavailable) with the reason; the instance keeps serving here.
  std::string transport = "auto";
  // Test hook: called on the migration thread before each step ("begin", "round 0",
  // "round 1", "freeze", "commit"); a non-OK status aborts the migration there, as a failure would.
  std::function<Status(const std::string& step)> step_hook;
  // Test hook for the shared-memory transport: may change the token presented on the
  // slot socket (`what` = "token") and each 'slot' frame's payload (`what` = "slot")
  // before it is sent, to check that the target refuses bad ones.
  std::function<void(const std::string& what, std::string* bytes)> shm_hook_for_test;
};

struct MigrationRound {
  uint32_t pages = 0;  // pages sent in the round
  uint64_t bytes = 0;  // bytes on the wire
  int64_t ns = 0;
};

struct MigrationReport {
  std::string instance;
  std::string to_device;
  std::string mode;   // "precopy" | "stop-and-copy"
  std::string codec;  // the codec used
  uint64_t memory_bytes = 0;
  std::vector<MigrationRound> rounds;  // pre-copy rounds (the freeze's pages not included)
  uint32_t final_pages = 0;            // pages sent while frozen
  uint64_t bytes_sent = 0;             // on the wire, all rounds and the commit
  uint64_t bytes_raw = 0;              // the same pages uncompressed (zero pages: 0)
  uint64_t zero_pages = 0;
  int64_t total_ns = 0;        // start → the instance serves at the target
  int64_t freeze_wait_ns = 0;  // waiting for a request boundary
  int64_t downtime_ns = 0;     // frozen → active at the target (requests wait meanwhile)
  uint64_t held = 0;           // requests that arrived while frozen, forwarded to the target
  std::string transport;       // "tcp" | "shm": how the pages went
  std::string transport_note;  // why "auto" took tcp (empty when it took shm, or was told)
  uint64_t shm_bytes = 0;      // page batches written into shared memory (not in bytes_sent)
};

class Agent {
 public:
  // Starts the worker threads (each creates its isolate) and, if `data_dir` holds
  // services from an earlier run, deploys them again.
  static Result<std::unique_ptr<Agent>> Create(const AgentOptions& options, wasm::Engine* engine);
  ~Agent();  // Shutdown()
  // Runs what is queued, stops the worker threads and destroys the instances. Later
  // calls fail fast with kUnavailable. Idempotent.
  void Shutdown();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Deploys (or, for a new version, replaces) a service: validates the manifest
  // against the module (every handler must be an exported function), compiles with
  // the manifest's memory cap, persists both to the data dir, and starts
  // `manifest.replicas` instances unless `start_instances` is false.
  Result<ServiceStatus> Deploy(const Manifest& manifest, std::string module_bytes,
                               bool start_instances = true);
  // Stops all instances of the service and forgets it.
  Status Undeploy(const std::string& service);

  // Starts one more instance of `service`; returns its id. `id` names it (a controller
  // assigns cluster-wide unique ids; kAlreadyExists if taken, kInvalidArgument if not a
  // valid name); "" = the agent picks "<service>-<n>".
  Result<std::string> StartInstance(const std::string& service, const std::string& id = "");
  Status StopInstance(const std::string& instance_id);

  // Queues a request. `done` runs exactly once, on a worker thread (or inline on the
  // calling thread for requests rejected before queueing).
  void Invoke(InvokeRequest request, std::function<void(InvokeResult)> done);
  // Blocking convenience over Invoke().
  InvokeResult InvokeSync(InvokeRequest request);

  // The in-process path: runs the request right here, on the calling thread, which
  // must be the worker thread that owns the target instance (`request.instance`, or
  // the first instance of the service). kFailedPrecondition otherwise. No queue, no
  // thread hop: what a co-located caller (and the in-agent benchmark) uses.
  Result<InvokeResult> InvokeInline(const InvokeRequest& request);
  // Runs `fn` on the worker thread that owns `instance_id` and waits.
  Status RunOnWorkerOf(const std::string& instance_id, const std::function<void()>& fn);

  // Snapshot of an instance's state at a request boundary. `journal_seq` (durable
  // instances): the last journal record the snapshot includes.
  Result<wasm::Snapshot> Snapshot(const std::string& instance_id, uint64_t* journal_seq = nullptr);
  // Replaces an instance's state with `snap` (taken from the same module). The restored
  // state also becomes the instance's rollback point. A durable instance's next journal
  // record carries every page (the keeper's journal does not know this state).
  Status Restore(const std::string& instance_id, const wasm::Snapshot& snap);

  // Durable instances (docs/design/migration.md "Durable instances").
  // Where the instance's journal is kept: each keeper's device and frame address (1 or
  // 2, distinct, never this device). A keeper already assigned keeps its place in the
  // journal; a new one, or one that dropped out, gets a full record first.
  Status SetKeepers(const std::string& instance_id, const std::vector<JournalKeeper>& keepers);
  Status SetKeeper(const std::string& instance_id, const std::string& device,
                   const std::string& tcp) {
    return SetKeepers(instance_id, {JournalKeeper{device, tcp}});
  }
  struct ReplayReport {
    size_t records = 0;        // applied
    uint64_t seq = 0;          // the journal sequence the instance is at now
    size_t ignored_bytes = 0;  // a torn or damaged tail, not applied
    uint64_t dedup_entries = 0;
  };
  // Applies journal records (concatenated framed records, agent/journal_record.h) on top
  // of the instance's state, which is the base checkpoint at sequence `base_seq`: the
  // pages, stack pointer and dedup entries of each whole record in order. A torn or
  // damaged tail is logged and ignored; nothing of it is applied.
  Result<ReplayReport> ReplayJournal(const std::string& instance_id, uint64_t base_seq,
                                     std::string_view records);
  struct JournalCheckpointReport {
    uint64_t seq = 0;    // the full record's sequence number
    uint64_t bytes = 0;  // its size (one copy)
    std::vector<std::string> keepers;  // those that acknowledged it
    // Those that did not: device, status (they drop out of the instance's keepers).
    std::vector<std::pair<std::string, Status>> failed;
  };
  // A base checkpoint of a durable instance: at its next request boundary, appends a
  // full record (every page and the whole dedup table) to each of its keepers and waits
  // for it to be durable. Their journals then start there (what came before is
  // dropped). Fails only when no keeper acknowledged it.
  Result<JournalCheckpointReport> JournalCheckpoint(const std::string& instance_id);
  // A keeper dropping out of a durable instance's journal, as the agent tells the
  // controller before it acknowledges the first reply durable without that keeper
  // (docs/design/migration.md "A keeper fails"): `keeper` did not acknowledge record
  // `seq`, which `kept_by` did; its journal may lack `seq` and lacks every record after.
  struct KeeperDrop {
    std::string instance, keeper, why;
    uint64_t seq = 0;
    std::vector<std::string> kept_by;
  };
  // Tells the controller of `drops` and calls `done` exactly once, on any thread, within
  // `timeout_ns`: OK once the controller recorded them durably.
  using KeeperDropReporter = std::function<void(
      std::vector<KeeperDrop> drops, int64_t timeout_ns, std::function<void(Status)> done)>;
  // Set by the registrar (agents joined to a cluster); null clears it. Without one (a
  // lone agent, keepers set by hand) a keeper drops out with only the log and the status
  // to say so. The reporter's `done` may run until it is cleared (it must not outlive
  // the agent).
  void SetKeeperDropReporter(KeeperDropReporter reporter);
  // This device's journals of other devices' durable instances (null without datasets).
  storage::JournalStore* journals() const { return journals_.get(); }
  // A "$journal" append from another agent (this device keeps its journal): `reply` gets
  // the answer once the record is durable or refused. Any thread.
  void ServeJournalFrame(transport::Frame f, std::function<void(transport::Frame)> reply);


  // Moves a running instance to the agent at options.to_tcp, keeping its id, its state
  // and its dedup table, while it keeps serving (docs/design/migration.md). Returns once
  // the instance runs at the target and no longer here; requests that arrived during
  // the cut-over are forwarded there, later ones too (or answered kMoved when the
  // caller routes by epoch). On failure before the cut-over (kUnavailable: the target
  // failed; kDeadlineExceeded: no request boundary in time; kNotFound, kAlreadyExists,
  // kFailedPrecondition from the target) the instance keeps serving here, having lost
  // nothing. Blocks the calling thread (not a worker thread) for the migration.
  Result<MigrationReport> Migrate(const std::string& instance_id, const MigrateOptions& options);
  // Where this agent accepts incoming migrations ("ip:port"; started on first use, on
  // the frame address's IP). Other agents learn it with a "$migrate" "address" frame.
  Result<std::string> MigrationAddress();
  // Instances that migrated away from here and where they went (device), for status.
  std::map<std::string, std::string> MovedInstances() EXCLUDES(mu_);
  // Whether an instance of `service` migrated away from here in the last few seconds.
  bool RecentlyMoved(const std::string& service) EXCLUDES(mu_);

  AgentStatus GetStatus();
  bool HasService(const std::string& service) EXCLUDES(mu_);
  bool HasRunningInstance(const std::string& service) EXCLUDES(mu_);
  const AgentOptions& options() const { return options_; }
  // The warm memory reserve; nullptr when options().memory_reserve_bytes is 0.
  MemoryReserve* memory_reserve() const { return reserve_.get(); }
  // Set once, before the first call (AgentServer does, when it knows its addresses).
  void SetAddresses(std::string tcp_address, std::string shm_path) {
    options_.tcp_address = std::move(tcp_address);
    options_.shm_path = std::move(shm_path);
  }

  // Where the instances of other agents run (fed by the CLI, a file or a controller).
  dataplane::LocationTable& locations() { return locations_; }
  // Emulated links between hosts (user-space delay on the TCP tier).
  dataplane::LinkTable& links() { return links_; }
  // Calls made by guests of this agent, per tier (index: dataplane::Tier), and how many
  // were re-dispatched after a kMoved answer.
  uint64_t calls_by_tier(dataplane::Tier t) const {
    return call_counts_[static_cast<int>(t)].load(std::memory_order_relaxed);
  }
  uint64_t moved_calls() const { return moved_.load(std::memory_order_relaxed); }

  // Datasets kept by this device (null when it keeps none), and where other devices'
  // datasets are (fed by the controller; PUT /v1/dataset-locations).
  storage::DatasetStore* datasets() const { return datasets_.get(); }
  // How the device's CPU is split between guests and its main task (set by Create).
  const Partition& partition() const { return partition_; }
  void SetDatasetLocations(std::vector<DatasetLocation> locations) EXCLUDES(mu_);
  std::vector<DatasetLocation> DatasetLocations() EXCLUDES(mu_);
  // Bytes fetched from other devices for guests of this agent, per peer host (the link
  // crossed; "" = a device of the same host).
  std::map<std::string, uint64_t> RemoteDataBytesByHost() EXCLUDES(mu_);

  // Shared-memory server side: which worker's doorbell a new connection gets (by the
  // instance id the client names as its hint; "$data@DEVICE", a dataset reader, gets the
  // dataset worker's), and handing the connection to it.
  const transport::Doorbell* DoorbellFor(std::string_view hint);
  Status AdoptShmConnection(std::unique_ptr<transport::ShmConnection> conn,
                            const transport::Doorbell* doorbell);

  // TCP server side, served by workers (AgentServer with TcpServing::kWorker): hands a
  // connected socket to a worker (round-robin), which from then on reads it, answers
  // pings/kMoved/errors, runs the invokes and writes the replies in its own loop. At
  // its first invoke the connection moves, once, to the worker of an instance of the
  // service it names, so that later requests to that service take no thread hop.
  // Any thread. kUnavailable when the agent is shutting down (the socket is closed).
  Status AdoptTcpConnection(transport::UniqueFd fd, const TcpConnLimits& limits);
  TcpConnStats tcp_stats() const;
  ShmServingStats shm_stats() const;

  // Test hook: runs `fn` on the worker that owns `instance_id`, with its engine
  // instance, and waits.
  Status RunOnInstanceForTest(const std::string& instance_id,
                              const std::function<void(wasm::Instance*)>& fn);
  // Test hook: a copy of the instance's rollback point (what a failed request goes back
  // to; a stateful instance's current state between requests).
  Result<wasm::Snapshot> RollbackPointForTest(const std::string& instance_id);

 private:
  struct Service;
  struct Slot;
  class WorkerThread;
  class CallingHost;
  struct OutCall;
  struct ServerConn;
  struct TcpConn;
  struct Route {
    int worker;
    std::shared_ptr<const Service> service;
    std::shared_ptr<std::atomic<uint64_t>> queued;
  };

  // ---- live migration (agent.cc: the parts that touch slots; migration.cc: the rest)
 public:
  struct MigChunk {
    std::vector<uint32_t> pages;  // ascending (MigScan, MigCopy: the pages not all zero)
    std::vector<uint32_t> zero;   // MigScan, MigCopy: the pages found all zero (not copied)
    // pages.size() × 4 KiB from `data_at` on, in the same order. MigScan and MigCopy
    // leave room before them for the page batch's head (and the frame's 8-byte memory
    // size), so the batch is assembled where the pages were copied.
    std::string data;
    size_t data_at = 0;
    uint32_t data_crc = 0;      // Crc32c of those pages, in that order (taken as copied)
    uint64_t memory_bytes = 0;  // the instance's memory size when copied
    // Shared-memory transport: the chunk is assembled in this slot of the target's
    // (kMigSlotBytes) instead of `data`, which stays empty.
    char* slot = nullptr;
    uint32_t slot_index = 0;
    char* bytes() { return slot != nullptr ? slot : data.data(); }
    // The end of the pages in bytes().
    size_t end() const {
      return slot != nullptr ? data_at + pages.size() * 4096 : data.size();
    }
  };
  struct Held {  // a request that arrived while its instance was frozen
    InvokeRequest req;
    std::function<void(InvokeResult)> done;
  };
  struct MovedTo {  // where a migrated instance went
    std::string service;
    std::string device;
    std::string tcp;
    int64_t at_ns = 0;
  };
  struct Incoming;  // the target side of a migration in progress
  class MigrationServer;
  class Forwarder;

 private:
  // Runs `fn` with the instance's slot on its worker like RunOnSlot, but gives up after
  // `timeout_ns` (kDeadlineExceeded; `fn` then never runs): control tasks wait for the
  // request boundary of every instance on that worker, which a request waiting in a
  // nested call can hold back indefinitely. It goes ahead of the requests queued on
  // that worker (the migration steps: a backlog must not hold a migration back).
  Status RunOnSlotWithin(const std::string& instance_id, int64_t timeout_ns,
                         const std::function<Status(WorkerThread*, Slot*)>& fn) EXCLUDES(mu_);
  // Source side; each runs a step on the instance's worker thread, waiting at most
  // `timeout_ns` for it to get there.
  // Starts tracking what the instance writes (exact with a userfaultfd tracker, else
  // page checksums). Returns the memory size, the module hash and the stack pointer.
  Status MigStart(const std::string& id, int64_t timeout_ns, uint64_t* memory_bytes, bool* exact, std::string* service,
                  std::string* module_hash, std::optional<uint32_t>* stack_pointer);
  // Exact mode: the pages written since the last call (or MigStart), forgotten here;
  // nullopt (and nothing forgotten) if they are at most `leave_if_at_most`.
  Result<std::optional<std::vector<uint32_t>>> MigTakeDirty(const std::string& id, int64_t timeout_ns,
                                                           uint32_t leave_if_at_most);
  // Copies `pages` (those still inside the memory) as they are now; zero pages are
  // listed, not copied.
  Status MigCopy(const std::string& id, int64_t timeout_ns, const std::vector<uint32_t>& pages,
                 MigChunk* out);
  // Checksum mode: copies the pages of [from, from + count) that changed since they were
  // last copied (all of them when `all`; exact mode: all of them).
  // `out` is overwritten (its buffer reused).
  Status MigScan(const std::string& id, int64_t timeout_ns, uint32_t from, uint32_t count, bool all,
                 MigChunk* out);
  // At the next request boundary (waiting at most `timeout_ns`): freezes the instance
  // (its requests are held from now on), takes the commit state and gathers what is left
  // to send (`all`: every page, stop-and-copy; else in exact mode the dirty pages, in
  // checksum mode those whose checksum changed). Up to `chunk_pages` of them are copied
  // into `*chunk` (as MigCopy does: a warm buffer or a slot) and `*rest` is empty; more
  // are left in place, `*chunk` empty and their list in `*rest`, for MigCopy while the
  // instance stays frozen. `frozen_ns`: when it froze (MonoNanos).
  Status MigFreeze(const std::string& id, int64_t timeout_ns, bool all, MigChunk* chunk,
                   uint32_t chunk_pages, std::vector<uint32_t>* rest, std::string* commit,
                   int64_t* frozen_ns);
  // Failure before the cut-over: thaws the instance and runs the held requests.
  void MigAbort(const std::string& id);
  // Success: the instance is gone from here; later requests for it go to `to`. Returns
  // the held requests (to be forwarded).
  std::vector<Held> MigFinish(const std::string& id, MovedTo to);
  // Requests for an instance that is frozen (held) or moved away (forwarded): true if
  // it took `req`/`done`.
  bool HoldOrForward(WorkerThread* wt, const std::string& id, InvokeRequest& req,
                     std::function<void(InvokeResult)>& done);
  void Forward(const MovedTo& to, InvokeRequest req, std::function<void(InvokeResult)> done);
  std::shared_ptr<Forwarder> ForwarderTo(const std::string& tcp) EXCLUDES(mig_mu_);
  std::optional<MovedTo> MovedRecord(const std::string& instance, const std::string& service)
      EXCLUDES(mu_);
  std::optional<MovedTo> MovedRecordLocked(const std::string& instance, const std::string& service)
      REQUIRES(mu_);
  bool IsFrozen(WorkerThread* wt, const std::string& id);
  void ShutdownMigration();
  // With a memory reserve: faults in the slot set an incoming same-host migration takes
  // (migration_slots.h), so that its batches cost no page faults on either side.
  void WarmMigrationSlots() EXCLUDES(mig_mu_);
  // Target: the slot set for an incoming migration from source process `pid` (the set
  // kept for it, else the warm set, else a new one), and its return when the migration
  // connection ends (kept for that process with a reserve, else unmapped).
  Result<std::shared_ptr<MigSlots>> SlotsFor(int pid) EXCLUDES(mig_mu_);
  void SlotsDone(int pid, std::shared_ptr<MigSlots> slots) EXCLUDES(mig_mu_);
  // "deploy" payload for the target: the instance's manifest and module.
  Result<std::string> MigrationDeployPayload(const std::string& instance) EXCLUDES(mu_);

 public:
  // Target side (called by MigrationServer's connection threads).
  Result<std::shared_ptr<Incoming>> IncomingBegin(const std::string& instance,
                                                  const std::string& service,
                                                  const std::string& module_hash,
                                                  uint64_t memory_bytes,
                                                  std::optional<uint32_t> stack_pointer);
  Status IncomingGrow(Incoming* in, uint64_t memory_bytes);
  // Applies a page batch (checked whole first) to the incoming instance's memory and its
  // rollback point to be; returns the number of pages. `shared`: the batch lies in a
  // migration slot its source may still write (ApplySharedPageBatch).
  Result<uint32_t> IncomingPageBatch(Incoming* in, std::string_view batch, bool shared = false);
  uint32_t IncomingPages(const Incoming* in) const;
  Status IncomingCommit(const std::shared_ptr<Incoming>& in, std::string_view commit);
  void IncomingDrop(const std::shared_ptr<Incoming>& in);
  Status DeployFromMigration(std::string_view payload);

 private:
  Agent(const AgentOptions& options, wasm::Engine* engine);
  Status LoadFromDataDir();
  Result<std::string> StartInstanceLocked(std::shared_ptr<const Service> svc,
                                          std::string id = "") EXCLUDES(mu_);
  Status StopInstanceOn(int worker, const std::string& id);
  void AddRoute(const std::string& id, Route route) REQUIRES(mu_);
  void EraseRoute(const std::string& id) REQUIRES(mu_);
  // The running instances of `service` (empty if none).
  const std::vector<std::string>& InstancesOf(const std::string& service) const REQUIRES(mu_);
  // The route of an instance; kNotFound if there is none.
  Result<Route> FindRoute(const std::string& instance_id) EXCLUDES(mu_);
  // Runs `fn` with the instance's slot on its worker thread and waits; kNotFound if the
  // instance does not exist or was stopped meanwhile.
  Status RunOnSlot(const std::string& instance_id,
                   const std::function<Status(WorkerThread*, Slot*)>& fn) EXCLUDES(mu_);
  // Puts `snap` into the slot's instance (in place, or into a fresh instance when the
  // memory has grown past the snapshot). Worker thread.
  Status RestoreSlot(WorkerThread* wt, Slot* slot, const wasm::Snapshot& snap);
  // Does a rollback that had to wait (Slot::rollback_pending); OK when none waits.
  Status FinishRollback(WorkerThread* wt, Slot* slot);
  // Durable instances, worker thread: journals what the request just run wrote (and its
  // dedup entry) on the keeper and waits for the acknowledgement, then makes the state
  // the rollback point; on failure rolls the request back and returns why (kUnavailable).
  Status MakeDurable(WorkerThread* wt, Slot* slot, const InvokeRequest& req, StatusCode code,
                     const std::string& answer);
  // What the request just run did to memory, leaving `good` as it is. `changed`: the
  // pages that differ from `good` (outside the dead stack) and the grown ones — what a
  // journal record carries. `dirty` (when `tracked`, the tracker's report): what
  // CommitGood copies into `good`; without a tracker CommitGood copies everything.
  Status WrittenPages(Slot* slot, std::vector<uint32_t>* dirty, std::vector<uint32_t>* changed,
                      bool* tracked);
  // Brings `good` up to date from `pages` (WrittenPages' `dirty`).
  Status CommitGood(Slot* slot, const std::vector<uint32_t>& pages, bool tracked);
  // Appends the slot's next record (`written` pages, the values of the mutable `globals`
  // and the `current` dedup entry; every page and the whole dedup table to a keeper that
  // needs it, or that refuses a delta) to every keeper in parallel and waits for their
  // acknowledgements. OK when at least one acknowledged and the controller recorded that
  // the others drop out (ReportKeeperDrops; they then drop out, logged).
  struct AppendOutcome {
    std::vector<std::pair<std::string, Status>> failed;  // keepers that did not take it
    uint64_t full_bytes = 0;  // the size of the full record, if one was sent
  };
  Status AppendRecord(WorkerThread* wt, Slot* slot, const std::vector<uint32_t>& written,
                      const std::vector<wasm::GlobalValue>& globals, const DedupEntry* current,
                      AppendOutcome* outcome = nullptr);
  // Tells the controller (the reporter) that keepers drop out, and waits (serving the
  // worker's other instances) for its answer. OK without a reporter.
  Status ReportKeeperDrops(WorkerThread* wt, Slot* slot, std::vector<KeeperDrop> drops);
  // Sends one framed record to a keeper; the caller waits for the call.
  std::shared_ptr<OutCall> SendJournal(WorkerThread* wt, const JournalKeeper& keeper,
                                       std::string payload);
  // Starts dirty-page tracking of the slot's memory (stateful services). Worker thread.
  void StartTracking(Slot* slot);
  // The pages written since the slot's tracker was last re-armed, re-arming it when
  // they are many; TrackingCheck: a small memory whose tracker re-arms too often goes
  // back to copying for a while (agent.cc, kTrackAlwaysBytes). Worker thread.
  Result<std::vector<uint32_t>> PeekWritten(Slot* slot);
  void TrackingCheck(Slot* slot);
  // Brings slot->good up to the instance's current state, copying only written pages
  // when a tracker is active. Worker thread, at a request boundary.
  Status UpdateGoodState(Slot* slot);
  // Invoke with any callable as `done` (agent.cc: the serving paths' lambdas become a
  // std::function only when their request is queued, held or forwarded).
  template <typename Done>
  void InvokeWith(InvokeRequest req, Done done);
  // InvokeRequest::OwnPayload, counted (shm_stats) when the payload was borrowed.
  void OwnRequestPayload(InvokeRequest* req) {
    if (req->borrowed_payload.data() == nullptr) return;
    shm_copied_.fetch_add(1, std::memory_order_relaxed);
    req->OwnPayload();
  }
  template <typename Done>
  bool RouteUncached(InvokeRequest& req, Done& done, WorkerThread* self, std::string* id,
                     int* worker, std::shared_ptr<std::atomic<uint64_t>>* queued) EXCLUDES(mu_);
  // True while an instance is frozen for a migration's cut-over or has moved away:
  // requests must go through HoldOrForward.
  bool MayHold() const {
    return frozen_slots_.load(std::memory_order_acquire) != 0 ||
           has_moved_.load(std::memory_order_acquire);
  }
  // A routed request on worker `wt`'s thread (queued, or inline from its own loop):
  // held or forwarded while its instance migrates, else executed and answered through
  // `done`; `queued` (the route's counter, incremented by Invoke) is decremented.
  void RunRequest(WorkerThread* wt, const std::string& id, InvokeRequest& req,
                  std::function<void(InvokeResult)>& done, std::atomic<uint64_t>* queued);
  // Runs one request on instance `id`, on worker `wt`'s thread; rolls back on failure.
  // Logs "trace <hex> <service>/<handler> <status>" at DEBUG level.
  InvokeResult Execute(WorkerThread* wt, const std::string& id, const InvokeRequest& req);
  InvokeResult ExecuteTraced(WorkerThread* wt, const std::string& id, const InvokeRequest& req,
                             uint64_t trace_id);

  // The call path (worker thread `wt`): picks an instance and a tier for `call` and
  // sends it (or runs it, in-process); completes the call at once on errors.
  void Dispatch(WorkerThread* wt, std::shared_ptr<OutCall> call);
  // Sends `call` to the agent at `loc` over `tier` (shared memory or TCP) through this
  // worker's channel; completes the call at once on errors.
  void SendRemote(WorkerThread* wt, std::shared_ptr<OutCall> call, dataplane::Tier tier,
                  const dataplane::InstanceLocation& loc);
  // A guest's dataset request (read/size/list) for a dataset kept elsewhere: a "$data"
  // invoke to its owner, waited for on this worker. Returns the result or a status.
  Result<std::string> RemoteData(WorkerThread* wt, const InvokeRequest& caller, uint64_t trace_id,
                                 const std::string& instance, const std::string& op,
                                 const std::string& dataset, const std::string& key,
                                 uint64_t offset, uint32_t len);
  void CountData(const std::string& instance, uint64_t local, uint64_t remote,
                 const std::string& remote_host) EXCLUDES(mu_);
  // After a kMoved answer: picks again, avoiding the instance that moved.
  void Redispatch(WorkerThread* wt, std::shared_ptr<OutCall> call);
  Result<std::unique_ptr<OutChannel>> OpenChannel(WorkerThread* wt, dataplane::Tier tier,
                                                  const dataplane::InstanceLocation& loc);
  // A request that arrived on a shared-memory connection owned by `wt`; `borrowed`: its
  // payload, when it was left in shared memory (ShmConnection::PollBorrowed), valid
  // until this returns.
  void ServeShmFrame(WorkerThread* wt, const std::shared_ptr<ServerConn>& sc,
                     std::string_view borrowed, transport::Frame&& f);
  // A request that arrived on a TCP connection owned by `wt`. Returns false if the
  // connection moved to another worker instead (which serves `f`).
  bool ServeTcpFrame(WorkerThread* wt, const std::shared_ptr<TcpConn>& c, transport::Frame f);
  int WorkerForHint(std::string_view hint) EXCLUDES(mu_);
  // The worker of the least-queued instance of `service`; -1 if it has none.
  int WorkerForService(const std::string& service) EXCLUDES(mu_);
  static uint64_t& wt_rng_state();

  AgentOptions options_;
  wasm::Engine* const engine_;
  // Declared early, destroyed late: incoming migrations hold it (MemoryReserve::Hold).
  std::unique_ptr<MemoryReserve> reserve_;
  std::vector<std::unique_ptr<WorkerThread>> workers_;
  // Serves "$data" requests that arrive over TCP, so that a guest running on a worker
  // never delays the device's dataset serving; runs no instances.
  std::unique_ptr<WorkerThread> data_worker_;
  Partition partition_;

  Mutex mu_;
  std::map<std::string, std::shared_ptr<const Service>> services_ GUARDED_BY(mu_);
  std::map</*instance id*/ std::string, Route> routes_ GUARDED_BY(mu_);
  // The same routes indexed by service, so that routing a request looks only at the
  // instances of its service. Kept in step with routes_ by AddRoute/EraseRoute.
  std::map</*service*/ std::string, std::vector<std::string>> instances_of_ GUARDED_BY(mu_);
  std::map</*service*/ std::string, uint64_t> next_instance_ GUARDED_BY(mu_);
  int next_worker_ GUARDED_BY(mu_) = 0;
  uint64_t next_conn_worker_ GUARDED_BY(mu_) = 0;
  // Bumped (under mu_) on every change of services_, routes_ and moved_to_: a worker's
  // route cache (InvokeWith) serves an entry only while this is the value it was filled
  // at, so the common request skips mu_ and the lookups with one atomic load.
  std::atomic<uint64_t> route_gen_{1};
  void RoutesChanged() REQUIRES(mu_) { route_gen_.fetch_add(1, std::memory_order_release); }

  std::unique_ptr<storage::DatasetStore> datasets_;
  // Destroyed before the workers (declared after them): its writer's last callbacks
  // post to them.
  std::unique_ptr<storage::JournalStore> journals_;
  std::map</*dataset*/ std::string, DatasetLocation> dataset_locations_ GUARDED_BY(mu_);
  std::map</*instance*/ std::string, DataCounters> data_counters_ GUARDED_BY(mu_);
  std::map</*peer host*/ std::string, uint64_t> remote_data_by_host_ GUARDED_BY(mu_);

  dataplane::LocationTable locations_;
  dataplane::LinkTable links_;
  std::atomic<uint64_t> call_counts_[4] = {};
  std::atomic<uint64_t> moved_{0};
  struct TcpCounters {
    std::atomic<uint64_t> accepted{0}, open{0}, moved{0}, closed_malformed{0}, closed_slow{0},
        output_bytes{0};
  };
  TcpCounters tcp_;
  std::atomic<uint64_t> shm_in_place_{0}, shm_copied_{0};

  std::map</*instance*/ std::string, MovedTo> moved_to_ GUARDED_BY(mu_);
  std::atomic<bool> has_moved_{false};  // moved_to_ is not empty
  // Slots frozen for a cut-over, on any worker (0 lets the request path skip the check;
  // a frozen slot destroyed otherwise leaves it high: only slower, still correct).
  std::atomic<int> frozen_slots_{0};
  std::map</*instance*/ std::string, std::shared_ptr<Incoming>> incoming_ GUARDED_BY(mu_);
  std::set</*instance*/ std::string> migrating_ GUARDED_BY(mu_);
  Mutex reporter_mu_;
  KeeperDropReporter keeper_drop_reporter_ GUARDED_BY(reporter_mu_);
  Mutex mig_mu_;
  std::shared_ptr<MigrationServer> mig_server_ GUARDED_BY(mig_mu_);  // shared: incomplete here
  std::map</*tcp address*/ std::string, std::shared_ptr<Forwarder>> forwarders_ GUARDED_BY(mig_mu_);
  // Shared-memory migration (migration_slots.h), kept only with a memory reserve: as a
  // target, the slot set faulted in at start (not yet handed to anyone) and the sets
  // handed to source processes, each only ever handed to that process again (it keeps
  // its mapping); as a source, the sets targets handed over, by their slot socket path.
  std::shared_ptr<MigSlots> warm_slots_ GUARDED_BY(mig_mu_);
  std::map</*source pid*/ int, std::shared_ptr<MigSlots>> kept_slots_ GUARDED_BY(mig_mu_);
  std::map</*slot socket*/ std::string, std::shared_ptr<MigSlots>> target_slots_
      GUARDED_BY(mig_mu_);
};

// Tunes glibc's malloc for a process whose main job is an Agent: payloads up to 16 MiB
// come from the heap rather than from mmap, and freed heap memory (up to 16 MiB per
// arena) is kept instead of being returned to the kernel after every request. Without
// it, each large request and reply (every worker thread allocates from its own arena,
// which glibc trims eagerly) costs page faults on fresh pages: ~20% of the agent's CPU
// time with 64 KiB payloads. Process-wide: call once at start (`tern agent` does).
void TuneMallocForAgentProcess();

// The data-plane protocol, shared by the TCP (agent_server.cc) and shared-memory
// (Agent's workers) front ends.
//
// The answer to a frame that needs no guest: kPong for kPing, kError for a type an
// agent does not serve, kMoved for an invoke whose epoch points here at a service that
// is not here (the caller re-picks). nullopt: an invoke to run.
std::optional<transport::Frame> AnswerWithoutGuest(Agent* agent, const transport::Frame& f);
// The request an invoke frame asks for. Its budget becomes a deadline counted from
// `received_ns` (MonoNanos() when the frame arrived; 0 = now).
InvokeRequest RequestFromFrame(transport::Frame&& f, int64_t received_ns = 0);
// A kReply frame answering `request_id`, without a payload.
transport::Frame ReplyHead(uint64_t request_id);
// The kReply or kError frame answering `request_id` with `r` (a reply_view is copied).
transport::Frame AnswerFrame(uint64_t request_id, InvokeResult&& r);

}  // namespace tern::agent
