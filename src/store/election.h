// Election: leader election among candidates sharing a ClusterStore (any backend),
// built only on the store's primitives:
//   - a candidate campaigns by putting `<prefix>/leader` = its id with its lease, only
//     if the key is absent (Apply with Compare mod_revision 0);
//   - the winner is leader while that key is its own: its lease expiring or being
//     revoked deletes the key, and a Resign deletes it;
//   - everyone watches the key; when it is deleted, the candidates whose lease lives
//     campaign again, and exactly one wins.
// A candidate whose lease is gone (expired, revoked) stops campaigning for good.
//
// The lease belongs to the caller (it may carry the caller's other keys too). With
// `keepalive_interval` set, the election keeps it alive itself and treats a failed
// KeepAlive (kNotFound) as the end of its leadership.
//
// Ownership: the caller owns the Election; `store` must outlive it.
// Thread-safety: is_leader(), leader() and Resign() may be called from any thread.
// `on_change` runs on the election's own thread, one call at a time, in order; it may
// call is_leader()/leader()/Resign() but must not destroy the Election.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"
#include "store/store.h"

namespace tern::store {

struct ElectionOptions {
  // 0 = the caller keeps the lease alive; else the election calls KeepAlive this often
  // (pick well under the lease's TTL, e.g. a third).
  std::chrono::milliseconds keepalive_interval{0};
  // Pause before re-establishing a failed watch.
  std::chrono::milliseconds retry_interval{200};
};

class Election {
 public:
  // Called with true when this candidate becomes leader, false when it stops being
  // leader (lease lost, key deleted, Resign).
  using OnChange = std::function<void(bool leader)>;

  // Joins the election under `prefix` (e.g. "/tern/controller") as `candidate_id`
  // with the live lease `lease`, and campaigns once before returning: is_leader() is
  // already settled then (on_change(true) for a win still comes on the election's
  // thread). Errors: kInvalidArgument (empty id or prefix, no lease), kNotFound (the
  // lease is not live), store errors.
  static Result<std::unique_ptr<Election>> Start(ClusterStore* store, std::string prefix,
                                                 std::string candidate_id, LeaseId lease,
                                                 OnChange on_change,
                                                 const ElectionOptions& options = {});
  // Resigns (if leader) and stops.
  ~Election();
  Election(const Election&) = delete;
  Election& operator=(const Election&) = delete;

  bool is_leader() const EXCLUDES(mu_);
  // The current leader's id as last seen ("" = none).
  std::string leader() const EXCLUDES(mu_);
  // Gives up leadership (deletes the key if it is still ours) and stops campaigning.
  Status Resign() EXCLUDES(mu_);

  // The key candidates compete for: `<prefix>/leader`.
  const std::string& key() const { return key_; }

 private:
  Election(ClusterStore* store, std::string prefix, std::string id, LeaseId lease, OnChange cb,
           const ElectionOptions& options);
  // Campaigns if the key is free, learns the current leader, and (re)starts the watch
  // after the revision read. Election thread (or Start, before it runs).
  Status Campaign() EXCLUDES(mu_);
  void Run() EXCLUDES(mu_);
  void SetLeader(bool leader, const std::string& leader_id, int64_t our_rev) EXCLUDES(mu_);
  void OnEvents(const Status& status, std::vector<WatchEvent> events) EXCLUDES(mu_);

  ClusterStore* const store_;
  const std::string key_;
  const std::string id_;
  const LeaseId lease_;
  const OnChange on_change_;
  const ElectionOptions options_;

  mutable Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  bool resigned_ GUARDED_BY(mu_) = false;
  bool lease_lost_ GUARDED_BY(mu_) = false;
  bool leader_ GUARDED_BY(mu_) = false;
  int64_t our_rev_ GUARDED_BY(mu_) = 0;  // mod_revision of our key while leader
  std::string leader_id_ GUARDED_BY(mu_);
  bool watch_failed_ GUARDED_BY(mu_) = false;
  std::deque<WatchEvent> events_ GUARDED_BY(mu_);
  std::deque<bool> notify_ GUARDED_BY(mu_);  // on_change calls to make
  std::unique_ptr<Watch> watch_;             // election thread (and Start / destructor)
  std::thread thread_;
};

}  // namespace tern::store
