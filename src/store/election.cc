#include "store/election.h"

#include <utility>

#include "core/clock.h"
#include "core/logging.h"

namespace tern::store {

Election::Election(ClusterStore* store, std::string prefix, std::string id, LeaseId lease,
                   OnChange cb, const ElectionOptions& options)
    : store_(store),
      key_(std::move(prefix) + "/leader"),
      id_(std::move(id)),
      lease_(lease),
      on_change_(std::move(cb)),
      options_(options) {}

Result<std::unique_ptr<Election>> Election::Start(ClusterStore* store, std::string prefix,
                                                  std::string candidate_id, LeaseId lease,
                                                  OnChange on_change,
                                                  const ElectionOptions& options) {
  if (store == nullptr) return InvalidArgumentError("election: no store");
  if (prefix.empty()) return InvalidArgumentError("election: empty prefix");
  if (candidate_id.empty()) return InvalidArgumentError("election: empty candidate id");
  if (lease == 0) return InvalidArgumentError("election: a candidate needs a lease");
  std::unique_ptr<Election> e(new Election(store, std::move(prefix), std::move(candidate_id),
                                           lease, std::move(on_change), options));
  TERN_RETURN_IF_ERROR(e->Campaign());
  {
    MutexLock l(&e->mu_);
    if (e->lease_lost_) {
      return NotFoundError("election: lease " + std::to_string(lease) + " is not live");
    }
  }
  e->thread_ = std::thread([p = e.get()] { p->Run(); });
  return e;
}

Election::~Election() {
  Status s = Resign();
  if (!s.ok()) TERN_LOG(DEBUG) << "election " << key_ << ": resign on exit: " << s;
  {
    MutexLock l(&mu_);
    stop_ = true;
    cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  watch_.reset();
}

bool Election::is_leader() const {
  MutexLock l(&mu_);
  return leader_;
}

std::string Election::leader() const {
  MutexLock l(&mu_);
  return leader_id_;
}

void Election::SetLeader(bool leader, const std::string& leader_id, int64_t our_rev) {
  MutexLock l(&mu_);
  leader_id_ = leader_id;
  if (leader) our_rev_ = our_rev;
  if (leader_ == leader) return;
  leader_ = leader;
  notify_.push_back(leader);
  cv_.SignalAll();
}

Status Election::Resign() {
  int64_t rev;
  {
    MutexLock l(&mu_);
    resigned_ = true;
    if (!leader_) return Status::Ok();
    rev = our_rev_;
  }
  Result<ClusterStore::ApplyResult> r = store_->Apply({Compare{key_, rev}}, {Op::Delete(key_)});
  SetLeader(false, "", 0);
  return r.ok() ? Status::Ok() : r.status();
}

Status Election::Campaign() {
  bool need_watch;
  {
    MutexLock l(&mu_);
    if (resigned_ || lease_lost_ || stop_) return Status::Ok();
    need_watch = watch_ == nullptr;
  }
  int64_t read_rev = 0;
  for (int attempt = 0;; ++attempt) {
    Result<ClusterStore::ApplyResult> a =
        store_->Apply({Compare{key_, 0}}, {Op::Put(key_, id_, lease_)});
    if (!a.ok()) {
      if (a.status().code() == StatusCode::kNotFound) {  // our lease is gone
        {
          MutexLock l(&mu_);
          lease_lost_ = true;
        }
        SetLeader(false, "", 0);
        return Status::Ok();
      }
      return a.status();
    }
    if (a->applied) {
      SetLeader(true, id_, a->revision);
      read_rev = a->revision;
      break;
    }
    TERN_ASSIGN_OR_RETURN(RangeResult r, store_->Range(key_));
    const KeyValue* kv = nullptr;
    for (const KeyValue& k : r.kvs) {
      if (k.key == key_) kv = &k;
    }
    read_rev = r.revision;
    if (kv != nullptr) {
      const bool ours = kv->value == id_ && kv->lease == lease_;
      SetLeader(ours, kv->value, kv->mod_revision);
      break;
    }
    if (attempt >= 3) break;  // freed and taken again repeatedly: the watch catches up
  }
  if (!need_watch) return Status::Ok();
  Result<std::unique_ptr<Watch>> w = store_->WatchPrefix(
      key_, read_rev,
      [this](const Status& status, std::vector<WatchEvent> events) {
        OnEvents(status, std::move(events));
      });
  if (!w.ok()) return w.status();
  watch_ = std::move(w).value();
  return Status::Ok();
}

void Election::OnEvents(const Status& status, std::vector<WatchEvent> events) {
  MutexLock l(&mu_);
  if (!status.ok()) {
    TERN_LOG(WARN) << "election " << key_ << ": watch ended: " << status;
    watch_failed_ = true;
  }
  for (WatchEvent& e : events) {
    if (e.kv.key == key_) events_.push_back(std::move(e));
  }
  cv_.SignalAll();
}

void Election::Run() {
  const bool keepalive = options_.keepalive_interval.count() > 0;
  const int64_t ka_nanos = std::chrono::nanoseconds(options_.keepalive_interval).count();
  int64_t next_ka = MonoNanos() + ka_nanos;
  MutexLock l(&mu_);
  while (!stop_) {
    if (!notify_.empty()) {
      const bool v = notify_.front();
      notify_.pop_front();
      mu_.Unlock();
      if (on_change_) on_change_(v);
      mu_.Lock();
      continue;
    }
    if (!events_.empty()) {
      WatchEvent e = std::move(events_.front());
      events_.pop_front();
      if (e.type == WatchEvent::Type::kPut) {
        const bool ours = e.kv.value == id_ && e.kv.lease == lease_;
        mu_.Unlock();
        SetLeader(ours, e.kv.value, e.kv.mod_revision);
        mu_.Lock();
      } else {
        mu_.Unlock();
        SetLeader(false, "", 0);
        Status s = Campaign();
        mu_.Lock();
        if (!s.ok()) {
          TERN_LOG(WARN) << "election " << key_ << ": campaign: " << s;
          watch_failed_ = true;  // resync: campaign again with a fresh watch
        }
      }
      continue;
    }
    if (watch_failed_) {
      watch_failed_ = false;
      mu_.Unlock();
      watch_.reset();
      Status s = Campaign();
      mu_.Lock();
      if (!s.ok() && !stop_) {
        TERN_LOG(WARN) << "election " << key_ << ": resync: " << s;
        watch_failed_ = true;
        cv_.WaitFor(&mu_, options_.retry_interval);
      }
      continue;
    }
    const int64_t now = MonoNanos();
    if (keepalive && !lease_lost_ && now >= next_ka) {
      next_ka = now + ka_nanos;
      mu_.Unlock();
      Status s = store_->KeepAlive(lease_);
      mu_.Lock();
      if (s.code() == StatusCode::kNotFound) {
        lease_lost_ = true;
        const std::string seen = leader_id_ == id_ ? "" : leader_id_;
        mu_.Unlock();
        SetLeader(false, seen, 0);
        mu_.Lock();
      } else if (!s.ok()) {
        TERN_LOG(WARN) << "election " << key_ << ": keepalive: " << s;
      }
      continue;
    }
    if (keepalive && !lease_lost_) {
      cv_.WaitFor(&mu_, std::chrono::nanoseconds(next_ka - now));
    } else {
      cv_.Wait(&mu_);
    }
  }
}

}  // namespace tern::store
