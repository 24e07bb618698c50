// Conformance tests of the ClusterStore contract (store.h), run against every backend:
// EmbeddedStore in memory and on files, and EtcdStore against a real etcd; then tests
// specific to each backend (persistence and recovery; etcd restarts).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "core/file.h"
#include "core/mutex.h"
#include "store/election.h"
#include "store/embedded_store.h"
#include "store/etcd_store.h"
#include "testing/etcd.h"
#include "testing/test_env.h"

namespace tern::store {
namespace {

using std::chrono::milliseconds;
using testing::EtcdProcess;

// Polls `cond` every 5 ms until it holds or `timeout` passes.
bool WaitUntil(const std::function<bool()>& cond, milliseconds timeout) {
  const int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
  while (!cond()) {
    if (MonoNanos() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

double SecondsSince(int64_t start) { return static_cast<double>(MonoNanos() - start) / 1e9; }

// Collects what a watch delivers.
class Collector {
 public:
  WatchCallback Callback() {
    return [this](const Status& s, std::vector<WatchEvent> events) {
      MutexLock l(&mu_);
      ++calls_;
      if (!s.ok()) {
        errors_.push_back(s);
        return;
      }
      if (events.empty()) empty_batch_ = true;
      for (auto& e : events) events_.push_back(std::move(e));
    };
  }
  bool WaitEvents(size_t n, milliseconds timeout = milliseconds(5000)) {
    return WaitUntil([&] { return size() >= n; }, timeout);
  }
  bool WaitError(milliseconds timeout) {
    return WaitUntil(
        [&] {
          MutexLock l(&mu_);
          return !errors_.empty();
        },
        timeout);
  }
  size_t size() {
    MutexLock l(&mu_);
    return events_.size();
  }
  std::vector<WatchEvent> events() {
    MutexLock l(&mu_);
    return events_;
  }
  std::vector<Status> errors() {
    MutexLock l(&mu_);
    return errors_;
  }
  int calls() {
    MutexLock l(&mu_);
    return calls_;
  }
  bool empty_batch() {
    MutexLock l(&mu_);
    return empty_batch_;
  }

 private:
  Mutex mu_;
  std::vector<WatchEvent> events_ GUARDED_BY(mu_);
  std::vector<Status> errors_ GUARDED_BY(mu_);
  int calls_ GUARDED_BY(mu_) = 0;
  bool empty_batch_ GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------- fixture

enum class Backend { kMemory, kFile, kEtcd };

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  switch (info.param) {
    case Backend::kMemory:
      return "EmbeddedMemory";
    case Backend::kFile:
      return "EmbeddedFile";
    case Backend::kEtcd:
      return "Etcd";
  }
  return "?";
}

// One etcd for the whole conformance suite (tests use distinct key prefixes).
EtcdProcess* SharedEtcd(std::string* why_not) {
  static std::unique_ptr<EtcdProcess> etcd;
  static Status error;
  static bool tried = false;
  if (!tried) {
    tried = true;
    Result<std::unique_ptr<EtcdProcess>> e = EtcdProcess::Start(testing::TempDir("etcd"));
    if (e.ok()) {
      etcd = std::move(e).value();
    } else {
      error = e.status();
    }
  }
  if (!etcd) *why_not = error.ToString();
  return etcd.get();
}

class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    p_ = std::string("/t/") + info->name() + "/";
    switch (GetParam()) {
      case Backend::kMemory: {
        Result<std::unique_ptr<EmbeddedStore>> s = EmbeddedStore::Open("", options_);
        ASSERT_TRUE(s.ok()) << s.status();
        store_ = std::move(s).value();
        break;
      }
      case Backend::kFile: {
        Result<std::unique_ptr<EmbeddedStore>> s =
            EmbeddedStore::Open(testing::TempDir("store"), options_);
        ASSERT_TRUE(s.ok()) << s.status();
        store_ = std::move(s).value();
        break;
      }
      case Backend::kEtcd: {
        if (!EtcdProcess::Available()) {
          GTEST_SKIP() << testing::kEtcdBinary << " is not installed (apt-get install etcd-server)";
        }
        std::string why;
        EtcdProcess* etcd = SharedEtcd(&why);
        ASSERT_NE(etcd, nullptr) << why;
        Result<std::unique_ptr<EtcdStore>> s = EtcdStore::Connect(etcd->endpoint());
        ASSERT_TRUE(s.ok()) << s.status();
        store_ = std::move(s).value();
        break;
      }
    }
  }

  std::string K(const std::string& k) const { return p_ + k; }
  int64_t Rev() {
    Result<RangeResult> r = store_->Range(p_);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->revision : -1;
  }
  bool Exists(const std::string& key) {
    Result<std::optional<KeyValue>> g = store_->Get(key);
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() && g->has_value();
  }

  EmbeddedStoreOptions options_;
  std::string p_;  // this test's key prefix
  std::unique_ptr<ClusterStore> store_;
};

// ---------------------------------------------------------------- kv

TEST_P(StoreTest, PutGetRangeDeleteAndRevisions) {
  const int64_t r0 = Rev();
  Result<int64_t> r1 = store_->Put(K("a"), "1");
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_GT(*r1, r0);
  Result<std::optional<KeyValue>> g = store_->Get(K("a"));
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(g->has_value());
  EXPECT_EQ((*g)->value, "1");
  EXPECT_EQ((*g)->create_revision, *r1);
  EXPECT_EQ((*g)->mod_revision, *r1);
  EXPECT_EQ((*g)->lease, 0);

  Result<int64_t> r2 = store_->Put(K("a"), "2");
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(*r2, *r1 + 1);
  g = store_->Get(K("a"));
  EXPECT_EQ((*g)->value, "2");
  EXPECT_EQ((*g)->create_revision, *r1) << "an update keeps the create revision";
  EXPECT_EQ((*g)->mod_revision, *r2);

  // Binary keys and values, bytewise order.
  const std::string bin_key = K(std::string("b\0\xff", 3));
  const std::string bin_val = std::string("\0\x01\xfe\xff", 4);
  ASSERT_TRUE(store_->Put(bin_key, bin_val).ok());
  ASSERT_TRUE(store_->Put(K("c/x"), "").ok());
  ASSERT_TRUE(store_->Put(K("c/y"), "y").ok());
  ASSERT_TRUE(store_->Put(p_.substr(0, p_.size() - 1) + "X", "outside").ok());

  Result<RangeResult> all = store_->Range(p_);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->kvs.size(), 4u);
  EXPECT_EQ(all->kvs[0].key, K("a"));
  EXPECT_EQ(all->kvs[1].key, bin_key);
  EXPECT_EQ(all->kvs[1].value, bin_val);
  EXPECT_EQ(all->kvs[2].key, K("c/x"));
  EXPECT_EQ(all->kvs[2].value, "");
  EXPECT_EQ(all->kvs[3].key, K("c/y"));
  EXPECT_EQ(all->revision, all->kvs[3].mod_revision + 1) << "the outside key came last";

  Result<RangeResult> sub = store_->Range(K("c/"));
  ASSERT_TRUE(sub.ok());
  ASSERT_EQ(sub->kvs.size(), 2u);
  EXPECT_EQ(sub->kvs[1].value, "y");

  Result<std::optional<KeyValue>> missing = store_->Get(K("nope"));
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());

  const int64_t before = Rev();
  EXPECT_EQ(*store_->Delete(K("a")), 1);
  EXPECT_EQ(Rev(), before + 1);
  EXPECT_FALSE(Exists(K("a")));
  EXPECT_EQ(*store_->Delete(K("a")), 0);
  EXPECT_EQ(Rev(), before + 1) << "deleting nothing makes no revision";

  // A re-created key gets a new create revision.
  Result<int64_t> r3 = store_->Put(K("a"), "3");
  EXPECT_EQ((*store_->Get(K("a")))->create_revision, *r3);
}

TEST_P(StoreTest, ApplyWithCompares) {
  // Create-if-absent: applies once.
  Result<ClusterStore::ApplyResult> a =
      store_->Apply({Compare{K("lock"), 0}}, {Op::Put(K("lock"), "me"), Op::Put(K("x"), "1")});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->applied);
  Result<std::optional<KeyValue>> lock = store_->Get(K("lock"));
  Result<std::optional<KeyValue>> x = store_->Get(K("x"));
  EXPECT_EQ((*lock)->mod_revision, a->revision) << "all ops at one revision";
  EXPECT_EQ((*x)->mod_revision, a->revision);

  Result<ClusterStore::ApplyResult> b =
      store_->Apply({Compare{K("lock"), 0}}, {Op::Put(K("lock"), "you"), Op::Put(K("y"), "1")});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->applied);
  EXPECT_EQ(b->revision, a->revision) << "not applied: the current revision";
  EXPECT_EQ((*store_->Get(K("lock")))->value, "me");
  EXPECT_FALSE(Exists(K("y"))) << "nothing of a failed Apply happens";

  // Compare on the mod revision (compare-and-swap), several compares, all must hold.
  Result<ClusterStore::ApplyResult> c =
      store_->Apply({Compare{K("lock"), a->revision}, Compare{K("absent"), 0}},
                    {Op::Put(K("lock"), "me2"), Op::Delete(K("x"))});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->applied);
  EXPECT_EQ(c->revision, a->revision + 1);
  EXPECT_FALSE(Exists(K("x")));
  Result<ClusterStore::ApplyResult> d = store_->Apply(
      {Compare{K("lock"), c->revision}, Compare{K("x"), a->revision}}, {Op::Delete(K("lock"))});
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->applied) << "the second compare fails: x is gone";
  EXPECT_TRUE(Exists(K("lock")));

  // DeletePrefix deletes a subtree at one revision.
  ASSERT_TRUE(store_->Put(K("dir/1"), "1").ok());
  ASSERT_TRUE(store_->Put(K("dir/2"), "2").ok());
  ASSERT_TRUE(store_->Put(K("dirt"), "3").ok());
  Result<ClusterStore::ApplyResult> e = store_->Apply({}, {Op::DeletePrefix(K("dir/"))});
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->applied);
  EXPECT_EQ(store_->Range(K("dir/"))->kvs.size(), 0u);
  EXPECT_TRUE(Exists(K("dirt")));

  // An Apply that changes nothing makes no revision.
  const int64_t now = Rev();
  Result<ClusterStore::ApplyResult> f = store_->Apply({}, {Op::Delete(K("never"))});
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->applied);
  EXPECT_EQ(f->revision, now);

  // Like etcd: a key put twice, or put and deleted, in one Apply is invalid.
  Result<ClusterStore::ApplyResult> g =
      store_->Apply({}, {Op::Put(K("d"), "1"), Op::Put(K("d"), "2")});
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument) << g.status();
  Result<ClusterStore::ApplyResult> h =
      store_->Apply({}, {Op::Put(K("e/1"), "1"), Op::DeletePrefix(K("e/"))});
  EXPECT_EQ(h.status().code(), StatusCode::kInvalidArgument) << h.status();
  EXPECT_FALSE(Exists(K("d")));
}

// ---------------------------------------------------------------- leases

TEST_P(StoreTest, LeasedKeysVanishAfterTtlWithoutKeepAlive) {
  Result<LeaseId> lease = store_->GrantLease(milliseconds(1000));
  ASSERT_TRUE(lease.ok()) << lease.status();
  const int64_t start = MonoNanos();
  ASSERT_TRUE(store_->Put(K("agent"), "up", *lease).ok());
  ASSERT_TRUE(store_->Put(K("plain"), "stays").ok());
  EXPECT_EQ((*store_->Get(K("agent")))->lease, *lease);
  ASSERT_TRUE(WaitUntil([&] { return !Exists(K("agent")); }, milliseconds(4000)));
  EXPECT_GE(SecondsSince(start), 0.9) << "expired before its TTL";
  EXPECT_TRUE(Exists(K("plain")));
  EXPECT_EQ(store_->KeepAlive(*lease).code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->Put(K("late"), "x", *lease).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->Put(K("bogus"), "x", 987654321).status().code(), StatusCode::kNotFound);
}

TEST_P(StoreTest, KeepAliveKeepsKeysAndRevokeDeletesThem) {
  Result<LeaseId> lease = store_->GrantLease(milliseconds(1000));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(store_->Put(K("a"), "1", *lease).ok());
  ASSERT_TRUE(store_->Apply({}, {Op::Put(K("b"), "2", *lease)}).ok());
  const int64_t until = MonoNanos() + 1'800'000'000;  // past the TTL and etcd's expiry check
  while (MonoNanos() < until) {
    ASSERT_TRUE(store_->KeepAlive(*lease).ok());
    ASSERT_TRUE(Exists(K("a"))) << "expired although kept alive";
    std::this_thread::sleep_for(milliseconds(200));
  }
  ASSERT_TRUE(store_->Revoke(*lease).ok());
  EXPECT_FALSE(Exists(K("a")));
  EXPECT_FALSE(Exists(K("b")));
  EXPECT_EQ(store_->Revoke(*lease).code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->KeepAlive(*lease).code(), StatusCode::kNotFound);
}

// ---------------------------------------------------------------- watches

TEST_P(StoreTest, WatchDeliversEveryEventInOrder) {
  const int64_t r0 = Rev();
  Collector c;
  Result<std::unique_ptr<Watch>> w = store_->WatchPrefix(K("w/"), r0, c.Callback());
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<int64_t> revs;
  for (int i = 0; i < 10; ++i) {
    Result<int64_t> r = store_->Put(K("w/") + std::to_string(i % 3), "v" + std::to_string(i));
    ASSERT_TRUE(r.ok());
    revs.push_back(*r);
  }
  ASSERT_TRUE(store_->Put(K("other"), "not watched").ok());
  ASSERT_EQ(*store_->Delete(K("w/0")), 1);
  revs.push_back(Rev());
  Result<ClusterStore::ApplyResult> a =
      store_->Apply({}, {Op::Put(K("w/a"), "x"), Op::Put(K("w/b"), "y")});
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(c.WaitEvents(13));
  std::vector<WatchEvent> ev = c.events();
  ASSERT_EQ(ev.size(), 13u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(ev[i].type, WatchEvent::Type::kPut);
    EXPECT_EQ(ev[i].kv.key, K("w/") + std::to_string(i % 3));
    EXPECT_EQ(ev[i].kv.value, "v" + std::to_string(i));
    EXPECT_EQ(ev[i].kv.mod_revision, revs[i]);
  }
  EXPECT_EQ(ev[3].kv.create_revision, revs[0]);
  EXPECT_EQ(ev[10].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(ev[10].kv.key, K("w/0"));
  EXPECT_EQ(ev[10].kv.mod_revision, revs[10]);
  EXPECT_EQ(ev[11].kv.mod_revision, a->revision);
  EXPECT_EQ(ev[12].kv.mod_revision, a->revision);
  EXPECT_FALSE(c.empty_batch());
  EXPECT_TRUE(c.errors().empty());
}

TEST_P(StoreTest, WatchFromAPastRevisionCatchesUp) {
  Result<int64_t> first = store_->Put(K("p/1"), "1");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(store_->Put(K("p/2"), "2").ok());
  ASSERT_TRUE(store_->Delete(K("p/1")).ok());
  Collector c;
  Result<std::unique_ptr<Watch>> w = store_->WatchPrefix(K("p/"), *first - 1, c.Callback());
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(store_->Put(K("p/3"), "3").ok());
  ASSERT_TRUE(c.WaitEvents(4));
  std::vector<WatchEvent> ev = c.events();
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].kv.key, K("p/1"));
  EXPECT_EQ(ev[0].kv.mod_revision, *first);
  EXPECT_EQ(ev[1].kv.key, K("p/2"));
  EXPECT_EQ(ev[2].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(ev[3].kv.key, K("p/3"));
  for (size_t i = 1; i < ev.size(); ++i) EXPECT_GT(ev[i].kv.mod_revision, ev[i - 1].kv.mod_revision);

  // "From now" (0) sees only later events.
  Collector now;
  Result<std::unique_ptr<Watch>> w2 = store_->WatchPrefix(K("p/"), 0, now.Callback());
  ASSERT_TRUE(w2.ok());
  ASSERT_TRUE(store_->Put(K("p/4"), "4").ok());
  ASSERT_TRUE(now.WaitEvents(1));
  EXPECT_EQ(now.events()[0].kv.key, K("p/4"));
}

TEST_P(StoreTest, WatchSeesLeaseExpiryAndRevokeDeletes) {
  Result<LeaseId> l1 = store_->GrantLease(milliseconds(1000));
  Result<LeaseId> l2 = store_->GrantLease(milliseconds(60000));
  ASSERT_TRUE(l1.ok() && l2.ok());
  ASSERT_TRUE(store_->Put(K("e/expires"), "x", *l1).ok());
  ASSERT_TRUE(store_->Put(K("e/revoked"), "y", *l2).ok());
  Collector c;
  Result<std::unique_ptr<Watch>> w = store_->WatchPrefix(K("e/"), Rev(), c.Callback());
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(store_->Revoke(*l2).ok());
  ASSERT_TRUE(c.WaitEvents(2, milliseconds(5000)));
  std::vector<WatchEvent> ev = c.events();
  EXPECT_EQ(ev[0].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(ev[0].kv.key, K("e/revoked"));
  EXPECT_EQ(ev[1].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(ev[1].kv.key, K("e/expires"));
  EXPECT_GT(ev[1].kv.mod_revision, ev[0].kv.mod_revision);
}

TEST_P(StoreTest, NoCallbackAfterTheWatchIsDestroyed) {
  // A destroyed watch gets nothing more.
  Collector gone;
  Result<std::unique_ptr<Watch>> w = store_->WatchPrefix(K("c/"), Rev(), gone.Callback());
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(store_->Put(K("c/1"), "1").ok());
  ASSERT_TRUE(gone.WaitEvents(1));
  w->reset();
  Collector later;
  Result<std::unique_ptr<Watch>> w2 = store_->WatchPrefix(K("c/"), Rev(), later.Callback());
  ASSERT_TRUE(w2.ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->Put(K("c/2"), std::to_string(i)).ok());
  ASSERT_TRUE(later.WaitEvents(5));  // the second watch saw them all by now
  EXPECT_EQ(gone.calls(), 1);

  // The destructor waits for a callback that is running.
  std::atomic<bool> in_callback{false};
  std::atomic<int> entered{0};
  Result<std::unique_ptr<Watch>> slow = store_->WatchPrefix(
      K("s/"), Rev(), [&](const Status&, std::vector<WatchEvent>) {
        in_callback = true;
        ++entered;
        std::this_thread::sleep_for(milliseconds(200));
        in_callback = false;
      });
  ASSERT_TRUE(slow.ok());
  ASSERT_TRUE(store_->Put(K("s/1"), "1").ok());
  ASSERT_TRUE(WaitUntil([&] { return in_callback.load(); }, milliseconds(5000)));
  slow->reset();
  EXPECT_FALSE(in_callback.load()) << "the destructor returned while a callback ran";
  EXPECT_EQ(entered.load(), 1);
}

TEST_P(StoreTest, WatchFromACompactedRevisionIsOutOfRange) {
  Result<int64_t> first = store_->Put(K("old"), "0");
  ASSERT_TRUE(first.ok());
  if (GetParam() == Backend::kEtcd) {
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(store_->Put(K("old"), std::to_string(i)).ok());
    ASSERT_TRUE(static_cast<EtcdStore*>(store_.get())->CompactForTest(Rev()).ok());
  } else {
    // Reopen with a short history; the test's history is older than that.
    EmbeddedStoreOptions o;
    o.history_limit = 3;
    Result<std::unique_ptr<EmbeddedStore>> s = EmbeddedStore::Open("", o);
    ASSERT_TRUE(s.ok());
    store_ = std::move(s).value();
    first = store_->Put(K("old"), "0");
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->Put(K("old"), std::to_string(i)).ok());
  }
  Collector c;
  Result<std::unique_ptr<Watch>> w = store_->WatchPrefix(K(""), *first - 1, c.Callback());
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kOutOfRange) << w.status();
  EXPECT_NE(w.status().message().find("compacted"), std::string_view::npos) << w.status();
  // A recent enough revision still works.
  Result<std::unique_ptr<Watch>> ok = store_->WatchPrefix(K(""), Rev(), c.Callback());
  EXPECT_TRUE(ok.ok()) << ok.status();
}

// ---------------------------------------------------------------- elections

class Candidate {
 public:
  Candidate(ClusterStore* store, const std::string& prefix, const std::string& id) {
    Result<LeaseId> l = store->GrantLease(milliseconds(1000));
    EXPECT_TRUE(l.ok()) << l.status();
    lease = l.value_or(0);
    ElectionOptions o;
    o.keepalive_interval = milliseconds(300);
    Result<std::unique_ptr<Election>> e = Election::Start(
        store, prefix, id, lease,
        [this](bool leader) {
          MutexLock l(&mu_);
          changes_.push_back(leader);
        },
        o);
    EXPECT_TRUE(e.ok()) << e.status();
    if (e.ok()) election = std::move(e).value();
  }
  std::vector<bool> changes() {
    MutexLock l(&mu_);
    return changes_;
  }

  LeaseId lease = 0;
  std::unique_ptr<Election> election;

 private:
  Mutex mu_;
  std::vector<bool> changes_ GUARDED_BY(mu_);
};

TEST_P(StoreTest, ElectionHasOneLeaderAndFailsOver) {
  Candidate a(store_.get(), K("ctl"), "a");
  Candidate b(store_.get(), K("ctl"), "b");
  ASSERT_TRUE(a.election && b.election);
  EXPECT_NE(a.election->is_leader(), b.election->is_leader()) << "exactly one leader";
  Candidate& leader = a.election->is_leader() ? a : b;
  Candidate& other = a.election->is_leader() ? b : a;
  const std::string leader_id = &leader == &a ? "a" : "b";
  EXPECT_EQ(leader.election->leader(), leader_id);
  EXPECT_EQ(other.election->leader(), leader_id);
  EXPECT_EQ((*store_->Get(K("ctl/leader")))->value, leader_id);
  ASSERT_TRUE(WaitUntil([&] { return leader.changes() == std::vector<bool>{true}; },
                        milliseconds(2000)));

  // Keepalives hold the leadership past the lease TTL.
  std::this_thread::sleep_for(milliseconds(1800));
  EXPECT_TRUE(leader.election->is_leader());
  EXPECT_FALSE(other.election->is_leader());

  // The leader's lease is revoked: the other takes over.
  const int64_t start = MonoNanos();
  ASSERT_TRUE(store_->Revoke(leader.lease).ok());
  ASSERT_TRUE(WaitUntil([&] { return other.election->is_leader(); }, milliseconds(3000)));
  EXPECT_LT(SecondsSince(start), 3.0);
  ASSERT_TRUE(WaitUntil([&] { return !leader.election->is_leader(); }, milliseconds(2000)));
  EXPECT_TRUE(
      WaitUntil([&] { return leader.changes() == std::vector<bool>{true, false}; }, milliseconds(2000)));
  EXPECT_TRUE(WaitUntil([&] { return other.changes() == std::vector<bool>{true}; }, milliseconds(2000)));
  const std::string other_id = leader_id == "a" ? "b" : "a";
  EXPECT_TRUE(WaitUntil([&] { return leader.election->leader() == other_id; }, milliseconds(2000)));
  EXPECT_EQ((*store_->Get(K("ctl/leader")))->value, other_id);

  // Resign frees the key; the old leader's lease is gone, so nobody is leader.
  ASSERT_TRUE(other.election->Resign().ok());
  EXPECT_FALSE(other.election->is_leader());
  EXPECT_FALSE(Exists(K("ctl/leader")));
  EXPECT_TRUE(WaitUntil([&] { return other.changes() == std::vector<bool>{true, false}; },
                        milliseconds(2000)));
}

TEST_P(StoreTest, ElectionRejectsADeadLease) {
  Result<std::unique_ptr<Election>> e =
      Election::Start(store_.get(), K("x"), "a", 424242, [](bool) {});
  EXPECT_EQ(e.status().code(), StatusCode::kNotFound) << e.status();
  EXPECT_EQ(Election::Start(store_.get(), K("x"), "", 1, [](bool) {}).status().code(),
            StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest,
                         ::testing::Values(Backend::kMemory, Backend::kFile, Backend::kEtcd),
                         BackendName);

// ---------------------------------------------------------------- embedded only

std::unique_ptr<EmbeddedStore> OpenOrDie(const std::string& dir, EmbeddedStoreOptions o = {}) {
  Result<std::unique_ptr<EmbeddedStore>> s = EmbeddedStore::Open(dir, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(s).value() : nullptr;
}

uint64_t FileSize(const std::string& path) {
  Result<std::string> d = ReadFile(path);
  return d.ok() ? d->size() : 0;
}

TEST(EmbeddedStoreTest, ReopenRecoversKeysRevisionAndLeases) {
  const std::string dir = testing::TempDir("reopen");
  int64_t rev;
  LeaseId lease;
  LeaseId long_lease;
  {
    auto s = OpenOrDie(dir);
    ASSERT_TRUE(s);
    ASSERT_TRUE(s->Put("a", "1").ok());
    ASSERT_TRUE(s->Put("b", "2").ok());
    ASSERT_TRUE(s->Put("a", "3").ok());
    ASSERT_EQ(*s->Delete("b"), 1);
    lease = *s->GrantLease(milliseconds(1000));
    long_lease = *s->GrantLease(milliseconds(60000));
    ASSERT_TRUE(s->Put("leased", "x", lease).ok());
    ASSERT_TRUE(s->Put("kept", "y", long_lease).ok());
    rev = s->Range("")->revision;
    EXPECT_EQ(s->Describe(), "embedded (" + dir + ")");
  }
  auto s = OpenOrDie(dir);
  ASSERT_TRUE(s);
  const int64_t loaded = MonoNanos();
  Result<RangeResult> r = s->Range("");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->revision, rev);
  ASSERT_EQ(r->kvs.size(), 3u);
  EXPECT_EQ(r->kvs[0].key, "a");
  EXPECT_EQ(r->kvs[0].value, "3");
  EXPECT_EQ(r->kvs[0].create_revision, 2);  // as etcd: an empty store is at revision 1
  EXPECT_EQ(r->kvs[0].mod_revision, 4);
  EXPECT_EQ(r->kvs[1].key, "kept");
  EXPECT_EQ(r->kvs[2].lease, lease);
  EXPECT_EQ(*s->Put("c", "4"), rev + 1) << "revisions continue";
  // The leases live on: the long one for good, the short one one TTL after the load.
  EXPECT_TRUE(s->KeepAlive(long_lease).ok());
  ASSERT_TRUE(WaitUntil([&] { return !s->Get("leased")->has_value(); }, milliseconds(4000)));
  EXPECT_GE(SecondsSince(loaded), 0.9);
  EXPECT_TRUE(s->Get("kept")->has_value());
  // New leases do not reuse old ids.
  Result<LeaseId> fresh = s->GrantLease(milliseconds(1000));
  EXPECT_GT(*fresh, long_lease);
}

TEST(EmbeddedStoreTest, WatchAfterReopenCatchesUpFromTheLog) {
  const std::string dir = testing::TempDir("rewatch");
  int64_t first;
  {
    auto s = OpenOrDie(dir);
    first = *s->Put("k/1", "1");
    ASSERT_TRUE(s->Put("k/2", "2").ok());
  }
  auto s = OpenOrDie(dir);
  Collector c;
  Result<std::unique_ptr<Watch>> w = s->WatchPrefix("k/", first - 1, c.Callback());
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(c.WaitEvents(2));
  EXPECT_EQ(c.events()[1].kv.value, "2");
}

TEST(EmbeddedStoreTest, TornTailRecordIsDropped) {
  const std::string dir = testing::TempDir("torn");
  const std::string log = JoinPath(dir, "store.log");
  uint64_t size_before_last;
  {
    auto s = OpenOrDie(dir);
    ASSERT_TRUE(s->Put("a", "1").ok());
    ASSERT_TRUE(s->Put("b", "2").ok());
    size_before_last = s->LogBytesForTest();
    ASSERT_TRUE(s->Put("c", std::string(100, 'c')).ok());
  }
  // A crash in the middle of the last append: its tail never reached the disk.
  ASSERT_EQ(::truncate(log.c_str(), static_cast<off_t>(FileSize(log) - 30)), 0);
  {
    auto s = OpenOrDie(dir);
    ASSERT_TRUE(s);
    EXPECT_TRUE(s->Get("b")->has_value());
    EXPECT_FALSE(s->Get("c")->has_value());
    EXPECT_EQ(FileSize(log), size_before_last) << "the torn record was cut off";
    EXPECT_EQ(*s->Put("d", "4"), 4);
  }
  // Only a header's worth of the last record.
  {
    std::ofstream f(log, std::ios::app | std::ios::binary);
    f.write("\x10\x00\x00", 3);
  }
  auto s = OpenOrDie(dir);
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->Get("d")->has_value());
  EXPECT_EQ(s->Range("")->revision, 4);
}

TEST(EmbeddedStoreTest, CorruptRecordInTheMiddleIsDataLoss) {
  const std::string dir = testing::TempDir("corrupt");
  const std::string log = JoinPath(dir, "store.log");
  uint64_t second_offset;
  {
    auto s = OpenOrDie(dir);
    ASSERT_TRUE(s->Put("a", "1").ok());
    second_offset = s->LogBytesForTest();
    ASSERT_TRUE(s->Put("b", "2").ok());
    ASSERT_TRUE(s->Put("c", "3").ok());
  }
  Result<std::string> data = ReadFile(log);
  ASSERT_TRUE(data.ok());
  std::string bad = *data;
  bad[second_offset + 12] ^= 0x40;  // a payload byte of the second record
  ASSERT_TRUE(WriteFileAtomic(log, bad).ok());
  Result<std::unique_ptr<EmbeddedStore>> s = EmbeddedStore::Open(dir);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kDataLoss) << s.status();
  EXPECT_NE(s.status().message().find(log), std::string_view::npos) << s.status();
  EXPECT_NE(s.status().message().find("offset " + std::to_string(second_offset)),
            std::string_view::npos)
      << s.status();
  EXPECT_EQ(*ReadFile(log), bad) << "a corrupt log is left as it was";
}

TEST(EmbeddedStoreTest, CompactionKeepsDataAndLeases) {
  const std::string dir = testing::TempDir("compact");
  EmbeddedStoreOptions o;
  o.compact_log_bytes = 1024;
  LeaseId lease;
  {
    auto s = OpenOrDie(dir, o);
    lease = *s->GrantLease(milliseconds(60000));
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(s->Put("k" + std::to_string(i % 50), std::string(20, 'a' + i % 26),
                         i % 10 == 0 ? lease : 0)
                      .ok());
    }
    ASSERT_TRUE(s->Delete("k7").ok());
    EXPECT_LT(s->LogBytesForTest(), 2048u);
    EXPECT_TRUE(FileExists(JoinPath(dir, "store.snap")));
  }
  auto s = OpenOrDie(dir, o);
  ASSERT_TRUE(s);
  Result<RangeResult> r = s->Range("");
  EXPECT_EQ(r->revision, 202);
  EXPECT_EQ(r->kvs.size(), 49u);
  Result<std::optional<KeyValue>> k0 = s->Get("k0");
  EXPECT_EQ((*k0)->value, std::string(20, 'a' + 150 % 26));
  EXPECT_EQ((*k0)->lease, lease);
  EXPECT_EQ((*k0)->create_revision, 2);  // the lease grant made no revision
  ASSERT_TRUE(s->Revoke(lease).ok());
  EXPECT_FALSE(s->Get("k0")->has_value());
  EXPECT_TRUE(s->Get("k1")->has_value());
  // And the state after compaction + more log records survives once more.
  ASSERT_TRUE(s->CompactForTest().ok());
  ASSERT_TRUE(s->Put("after", "x").ok());
  s.reset();
  s = OpenOrDie(dir, o);
  EXPECT_TRUE(s->Get("after")->has_value());
  EXPECT_FALSE(s->Get("k10")->has_value());
}

TEST(EmbeddedStoreTest, ADirectoryHasOneOwner) {
  const std::string dir = testing::TempDir("lock");
  auto s = OpenOrDie(dir);
  Result<std::unique_ptr<EmbeddedStore>> again = EmbeddedStore::Open(dir);
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition) << again.status();
}

// ---------------------------------------------------------------- etcd only

TEST(EtcdStoreTest, UnreachableEtcdIsUnavailable) {
  EtcdStoreOptions o;
  o.connect_timeout = milliseconds(500);
  // Port 1 on loopback: nothing listens there.
  Result<std::unique_ptr<EtcdStore>> s = EtcdStore::Connect("127.0.0.1:1", o);
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable) << s.status();
  EXPECT_EQ(EtcdStore::Connect("nonsense", o).status().code(), StatusCode::kInvalidArgument);
}

TEST(EtcdStoreTest, PrefixRangeEnd) {
  EXPECT_EQ(PrefixRangeEnd("a/"), "a0");
  EXPECT_EQ(PrefixRangeEnd(std::string("a\xff", 2)), "b");
  EXPECT_EQ(PrefixRangeEnd(""), std::string(1, '\0'));
}

TEST(EtcdStoreTest, WatchResumesAcrossAnEtcdRestart) {
  if (!EtcdProcess::Available()) GTEST_SKIP() << testing::kEtcdBinary << " is not installed";
  Result<std::unique_ptr<EtcdProcess>> etcd = EtcdProcess::Start(testing::TempDir("etcd_restart"));
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  EtcdStoreOptions o;
  o.watch_unavailable_timeout = milliseconds(1500);
  o.request_timeout = milliseconds(2000);
  Result<std::unique_ptr<EtcdStore>> s = EtcdStore::Connect((*etcd)->endpoint(), o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->Describe(), "etcd (" + (*etcd)->endpoint() + ")");
  Collector c;
  Result<std::unique_ptr<Watch>> w = (*s)->WatchPrefix("r/", 0, c.Callback());
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*s)->Put("r/1", "1").ok());
  ASSERT_TRUE(c.WaitEvents(1));

  ASSERT_TRUE((*etcd)->Kill().ok());
  EXPECT_EQ((*s)->Put("r/x", "x").status().code(), StatusCode::kUnavailable);
  ASSERT_TRUE((*etcd)->Restart().ok());
  // Written before the watch had a chance to reconnect, and after.
  ASSERT_TRUE((*s)->Put("r/2", "2").ok());
  ASSERT_TRUE((*s)->Put("r/3", "3").ok());
  ASSERT_TRUE((*s)->Delete("r/1").ok());
  ASSERT_TRUE(c.WaitEvents(4, milliseconds(8000)));
  std::vector<WatchEvent> ev = c.events();
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].kv.key, "r/1");
  EXPECT_EQ(ev[1].kv.key, "r/2");
  EXPECT_EQ(ev[2].kv.key, "r/3");
  EXPECT_EQ(ev[3].type, WatchEvent::Type::kDelete);
  for (size_t i = 1; i < ev.size(); ++i) EXPECT_EQ(ev[i].kv.mod_revision, ev[i - 1].kv.mod_revision + 1);
  EXPECT_TRUE(c.errors().empty());

  // Gone for longer than the watch's patience: it ends with kUnavailable, once.
  ASSERT_TRUE((*etcd)->Kill().ok());
  ASSERT_TRUE(c.WaitError(milliseconds(6000)));
  std::vector<Status> errors = c.errors();
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].code(), StatusCode::kUnavailable) << errors[0];
}

}  // namespace
}  // namespace tern::store
