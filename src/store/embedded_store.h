// EmbeddedStore: the in-process ClusterStore (store.h), persisted to a directory so a
// restarted controller recovers its keys, revision and leases.
//
// Persistence (see docs/design/cluster-store.md for the byte layout):
//   <dir>/store.log   an append-only log of committed mutations, one record each:
//                     u32 payload length, u32 CRC32C of (length, payload), payload.
//                     A mutation is written (and fdatasync'ed, by default) before it is
//                     applied in memory or seen by a watcher.
//   <dir>/store.snap  the whole state at one log sequence number, written atomically
//                     (temporary file + rename) when the log grows past
//                     `compact_log_bytes`; the log then starts over.
// On Open, the snapshot is loaded and the log replayed. A torn last record (a crash in
// the middle of an append) is dropped and the log truncated; a bad record with valid
// data after it is kDataLoss naming the file and the offset. The directory is locked
// (flock) so two processes cannot open it at once.
//
// Leases: TTLs keep millisecond precision (no rounding). A timer thread expires them;
// expiry deletes the lease's keys at one new revision, which watchers see. Leases are
// persisted; after a reload each one gets its full TTL again, counted from the load.
//
// Watches: events are delivered on one store-owned thread, in revision order, one batch
// per revision (a catch-up batch first). The store remembers the last
// `history_limit` revisions' events for catch-up; older after_revision values give
// kOutOfRange ("compacted"). after_revision 0 means "from now". As in etcd, an
// empty store is at revision 1, so the first mutation makes revision 2.
//
// Ownership: the caller owns the store; Watch handles must be destroyed before it.
// Thread-safety: all methods may be called from any thread (one mutex guards the state;
// callbacks run without it held).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"
#include "store/store.h"

namespace tern::store {

struct EmbeddedStoreOptions {
  // fdatasync the log after every mutation. Off only for benchmarks: a crash may then
  // lose the last mutations (never corrupt the store).
  bool sync = true;
  // Compact the log into a snapshot when it grows past this many bytes.
  uint64_t compact_log_bytes = 4u << 20;
  // How many recent revisions' events are kept for watch catch-up.
  size_t history_limit = 10000;
};

namespace internal {
struct Mutation;
struct WatcherState;
}  // namespace internal

class EmbeddedStore final : public ClusterStore {
 public:
  // Opens (creating if needed) the store in directory `dir`; "" keeps everything in
  // memory only. Errors: kDataLoss for corrupt files (naming file and offset),
  // kFailedPrecondition if another process holds the directory, I/O errors otherwise.
  static Result<std::unique_ptr<EmbeddedStore>> Open(const std::string& dir,
                                                     const EmbeddedStoreOptions& options = {});
  ~EmbeddedStore() override;
  EmbeddedStore(const EmbeddedStore&) = delete;
  EmbeddedStore& operator=(const EmbeddedStore&) = delete;

  std::string Describe() const override;
  Result<int64_t> Put(std::string_view key, std::string_view value, LeaseId lease = 0) override;
  Result<std::optional<KeyValue>> Get(std::string_view key) override;
  Result<RangeResult> Range(std::string_view prefix) override;
  Result<int64_t> Delete(std::string_view key) override;
  Result<ApplyResult> Apply(const std::vector<Compare>& compares,
                            const std::vector<Op>& ops) override;
  Result<LeaseId> GrantLease(std::chrono::milliseconds ttl) override;
  Status KeepAlive(LeaseId lease) override;
  Status Revoke(LeaseId lease) override;
  Result<std::unique_ptr<Watch>> WatchPrefix(std::string_view prefix, int64_t after_revision,
                                             WatchCallback callback) override;

  // Writes a snapshot and starts a new log now (normally automatic). No-op in memory.
  Status CompactForTest() EXCLUDES(mu_);
  // The log's current size in bytes (0 in memory).
  uint64_t LogBytesForTest() const EXCLUDES(mu_);

 private:
  struct LeaseState {
    int64_t ttl_ms = 0;
    int64_t deadline_nanos = 0;
    std::set<std::string> keys;
  };
  class WatchHandle;

  EmbeddedStore(std::string dir, const EmbeddedStoreOptions& options);
  Status Load() EXCLUDES(mu_);
  Status LoadSnapshot(const std::string& data) REQUIRES(mu_);
  Status ReplayLog() REQUIRES(mu_);
  std::string EncodeSnapshot() const REQUIRES(mu_);
  // Logs then applies `m`; on a log failure nothing changes.
  Status Commit(internal::Mutation m) REQUIRES(mu_);
  void ApplyMutation(const internal::Mutation& m, bool notify) REQUIRES(mu_);
  Status CompactLocked() REQUIRES(mu_);
  // Builds the revoke mutation of a lease (its keys deleted at one revision).
  internal::Mutation RevokeMutation(LeaseId lease) REQUIRES(mu_);
  void TimerLoop() EXCLUDES(mu_);
  void DispatchLoop() EXCLUDES(mu_);
  void CancelWatch(const std::shared_ptr<internal::WatcherState>& w) EXCLUDES(mu_);

  const std::string dir_;
  const EmbeddedStoreOptions options_;
  std::string log_path_;
  std::string snap_path_;
  int lock_fd_ = -1;

  mutable Mutex mu_;
  CondVar timer_cv_;     // lease deadlines changed, or closing
  CondVar dispatch_cv_;  // queue_ grew, or closing
  bool closing_ GUARDED_BY(mu_) = false;
  int log_fd_ GUARDED_BY(mu_) = -1;
  uint64_t log_bytes_ GUARDED_BY(mu_) = 0;
  uint64_t seq_ GUARDED_BY(mu_) = 0;  // sequence number of the last logged mutation
  Status broken_ GUARDED_BY(mu_);     // a failed log write we could not undo
  int64_t revision_ GUARDED_BY(mu_) = 1;  // as etcd: an empty store is at 1
  LeaseId next_lease_ GUARDED_BY(mu_) = 1;
  std::map<std::string, KeyValue, std::less<>> kvs_ GUARDED_BY(mu_);
  std::map<LeaseId, LeaseState> leases_ GUARDED_BY(mu_);
  // Events of recent revisions, oldest first; events of revisions <= compacted_ may be
  // missing.
  std::deque<std::pair</* revision */ int64_t, std::vector<WatchEvent>>> history_ GUARDED_BY(mu_);
  int64_t compacted_ GUARDED_BY(mu_) = 1;
  std::map</* watch id */ uint64_t, std::shared_ptr<internal::WatcherState>> watchers_
      GUARDED_BY(mu_);
  uint64_t next_watch_ GUARDED_BY(mu_) = 1;
  std::deque<std::pair<std::shared_ptr<internal::WatcherState>, std::vector<WatchEvent>>> queue_
      GUARDED_BY(mu_);
  std::thread::id dispatch_thread_id_;
  std::thread timer_thread_;
  std::thread dispatch_thread_;
};

}  // namespace tern::store
