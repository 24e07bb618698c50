#include "store/embedded_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/bytes.h"
#include "core/crc32c.h"
#include "core/clock.h"
#include "core/file.h"
#include "core/logging.h"

namespace tern::store {


// ---------------------------------------------------------------- encoding

namespace internal {

// One committed change: what the log stores and what replay applies.
struct Mutation {
  uint64_t seq = 0;
  int64_t revision = 0;  // the kv revision it creates; 0 = no kv change
  std::vector<WatchEvent> events;
  LeaseId grant = 0;
  int64_t grant_ttl_ms = 0;
  LeaseId revoke = 0;
};

struct WatcherState {
  uint64_t id = 0;
  std::string prefix;
  int64_t after = 0;
  WatchCallback callback;
  std::atomic<bool> cancelled{false};
  Mutex callback_mu;  // held while the callback runs
};

}  // namespace internal

using internal::Mutation;
using internal::WatcherState;

namespace {

constexpr uint8_t kRecordVersion = 1;
constexpr uint32_t kSnapshotMagic = 0x504e5354;  // "TSNP" little-endian
constexpr uint32_t kSnapshotVersion = 1;
constexpr size_t kRecordHeader = 8;
constexpr uint32_t kMaxRecordBytes = 1u << 30;

void PutI64(std::string* out, int64_t v) { AppendU64(out, static_cast<uint64_t>(v)); }
void PutStr(std::string* out, std::string_view s) {
  AppendU32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

// Reads little-endian fields; any read past the end sets `bad`.
class Reader {
 public:
  explicit Reader(std::string_view data) : d_(data) {}
  bool bad() const { return bad_; }
  bool done() const { return pos_ == d_.size(); }
  uint8_t U8() {
    if (!Need(1)) return 0;
    return static_cast<uint8_t>(d_[pos_++]);
  }
  uint32_t U32() {
    if (!Need(4)) return 0;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(d_[pos_ + i])} << (8 * i);
    pos_ += 4;
    return v;
  }
  uint64_t U64() {
    if (!Need(8)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(d_[pos_ + i])} << (8 * i);
    pos_ += 8;
    return v;
  }
  int64_t I64() { return static_cast<int64_t>(U64()); }
  std::string Str() {
    uint32_t n = U32();
    if (!Need(n)) return {};
    std::string s(d_.substr(pos_, n));
    pos_ += n;
    return s;
  }

 private:
  bool Need(size_t n) {
    if (bad_ || d_.size() - pos_ < n) {
      bad_ = true;
      return false;
    }
    return true;
  }
  std::string_view d_;
  size_t pos_ = 0;
  bool bad_ = false;
};

void PutKv(std::string* out, const KeyValue& kv) {
  PutStr(out, kv.key);
  PutStr(out, kv.value);
  PutI64(out, kv.create_revision);
  PutI64(out, kv.mod_revision);
  PutI64(out, kv.lease);
}
KeyValue ReadKv(Reader* r) {
  KeyValue kv;
  kv.key = r->Str();
  kv.value = r->Str();
  kv.create_revision = r->I64();
  kv.mod_revision = r->I64();
  kv.lease = r->I64();
  return kv;
}

std::string EncodeMutation(const Mutation& m) {
  std::string p;
  p.push_back(static_cast<char>(kRecordVersion));
  AppendU64(&p, m.seq);
  PutI64(&p, m.revision);
  PutI64(&p, m.grant);
  PutI64(&p, m.grant_ttl_ms);
  PutI64(&p, m.revoke);
  AppendU32(&p, static_cast<uint32_t>(m.events.size()));
  for (const WatchEvent& e : m.events) {
    p.push_back(e.type == WatchEvent::Type::kPut ? 'P' : 'D');
    PutKv(&p, e.kv);
  }
  return p;
}

bool DecodeMutation(std::string_view payload, Mutation* m) {
  Reader r(payload);
  if (r.U8() != kRecordVersion) return false;
  m->seq = r.U64();
  m->revision = r.I64();
  m->grant = r.I64();
  m->grant_ttl_ms = r.I64();
  m->revoke = r.I64();
  uint32_t n = r.U32();
  for (uint32_t i = 0; i < n && !r.bad(); ++i) {
    WatchEvent e;
    uint8_t t = r.U8();
    if (t != 'P' && t != 'D') return false;
    e.type = t == 'P' ? WatchEvent::Type::kPut : WatchEvent::Type::kDelete;
    e.kv = ReadKv(&r);
    m->events.push_back(std::move(e));
  }
  return !r.bad() && r.done();
}

// length, CRC32C over (length bytes, payload), payload.
std::string FrameRecord(const std::string& payload) {
  std::string rec;
  rec.reserve(kRecordHeader + payload.size());
  AppendU32(&rec, static_cast<uint32_t>(payload.size()));
  uint32_t crc = Crc32c(rec.data(), 4);
  crc = Crc32c(payload.data(), payload.size(), crc);
  AppendU32(&rec, crc);
  rec.append(payload);
  return rec;
}

bool HasPrefix(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

Status WriteFully(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write", errno);
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------- watch handle

class EmbeddedStore::WatchHandle final : public Watch {
 public:
  WatchHandle(EmbeddedStore* store, std::shared_ptr<WatcherState> w)
      : store_(store), w_(std::move(w)) {}
  ~WatchHandle() override { store_->CancelWatch(w_); }

 private:
  EmbeddedStore* const store_;
  std::shared_ptr<WatcherState> w_;
};

// ---------------------------------------------------------------- open / load

EmbeddedStore::EmbeddedStore(std::string dir, const EmbeddedStoreOptions& options)
    : dir_(std::move(dir)), options_(options) {
  if (!dir_.empty()) {
    log_path_ = JoinPath(dir_, "store.log");
    snap_path_ = JoinPath(dir_, "store.snap");
  }
}

Result<std::unique_ptr<EmbeddedStore>> EmbeddedStore::Open(const std::string& dir,
                                                           const EmbeddedStoreOptions& options) {
  if (options.history_limit == 0) {
    return InvalidArgumentError("embedded store: history_limit must be > 0");
  }
  std::unique_ptr<EmbeddedStore> s(new EmbeddedStore(dir, options));
  TERN_RETURN_IF_ERROR(s->Load());
  s->timer_thread_ = std::thread([p = s.get()] { p->TimerLoop(); });
  s->dispatch_thread_ = std::thread([p = s.get()] { p->DispatchLoop(); });
  s->dispatch_thread_id_ = s->dispatch_thread_.get_id();
  return s;
}

EmbeddedStore::~EmbeddedStore() {
  {
    MutexLock l(&mu_);
    closing_ = true;
    timer_cv_.SignalAll();
    dispatch_cv_.SignalAll();
  }
  if (timer_thread_.joinable()) timer_thread_.join();
  if (dispatch_thread_.joinable()) dispatch_thread_.join();
  MutexLock l(&mu_);
  if (log_fd_ >= 0) ::close(log_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Status EmbeddedStore::Load() {
  MutexLock l(&mu_);
  if (dir_.empty()) return Status::Ok();
  TERN_RETURN_IF_ERROR(MakeDirs(dir_));
  const std::string lock_path = JoinPath(dir_, "LOCK");
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return ErrnoError("embedded store: open " + lock_path, errno);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return FailedPreconditionError("embedded store: " + dir_ +
                                   " is in use by another process (" + lock_path + " is locked)");
  }
  if (FileExists(snap_path_)) {
    TERN_ASSIGN_OR_RETURN(std::string snap, ReadFile(snap_path_));
    TERN_RETURN_IF_ERROR(LoadSnapshot(snap));
  }
  TERN_RETURN_IF_ERROR(ReplayLog());
  log_fd_ = ::open(log_path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log_fd_ < 0) return ErrnoError("embedded store: open " + log_path_, errno);
  struct stat st;
  if (::fstat(log_fd_, &st) != 0) return ErrnoError("embedded store: stat " + log_path_, errno);
  log_bytes_ = static_cast<uint64_t>(st.st_size);
  const int64_t now = MonoNanos();
  for (auto& [id, lease] : leases_) lease.deadline_nanos = now + lease.ttl_ms * 1'000'000;
  return Status::Ok();
}

Status EmbeddedStore::LoadSnapshot(const std::string& data) {
  auto corrupt = [&](std::string_view why) {
    return DataLossError("embedded store: " + snap_path_ + ": " + std::string(why));
  };
  Reader head(data);
  if (head.U32() != kSnapshotMagic) return corrupt("not a snapshot file (bad magic)");
  uint32_t version = head.U32();
  if (version != kSnapshotVersion) {
    return corrupt("unsupported snapshot version " + std::to_string(version));
  }
  uint32_t crc = head.U32();
  if (head.bad()) return corrupt("truncated header");
  std::string_view body = std::string_view(data).substr(12);
  if (Crc32c(body.data(), body.size()) != crc) return corrupt("checksum mismatch");
  Reader r(body);
  seq_ = r.U64();
  revision_ = r.I64();
  next_lease_ = r.I64();
  uint32_t nl = r.U32();
  for (uint32_t i = 0; i < nl && !r.bad(); ++i) {
    LeaseId id = r.I64();
    leases_[id].ttl_ms = r.I64();
  }
  uint32_t nk = r.U32();
  for (uint32_t i = 0; i < nk && !r.bad(); ++i) {
    KeyValue kv = ReadKv(&r);
    if (kv.lease != 0) leases_[kv.lease].keys.insert(kv.key);
    std::string key = kv.key;
    kvs_[key] = std::move(kv);
  }
  if (r.bad() || !r.done()) return corrupt("malformed content");
  compacted_ = revision_;
  return Status::Ok();
}

std::string EmbeddedStore::EncodeSnapshot() const {
  std::string body;
  AppendU64(&body, seq_);
  PutI64(&body, revision_);
  PutI64(&body, next_lease_);
  AppendU32(&body, static_cast<uint32_t>(leases_.size()));
  for (const auto& [id, lease] : leases_) {
    PutI64(&body, id);
    PutI64(&body, lease.ttl_ms);
  }
  AppendU32(&body, static_cast<uint32_t>(kvs_.size()));
  for (const auto& [key, kv] : kvs_) PutKv(&body, kv);
  std::string out;
  AppendU32(&out, kSnapshotMagic);
  AppendU32(&out, kSnapshotVersion);
  AppendU32(&out, Crc32c(body.data(), body.size()));
  out.append(body);
  return out;
}

Status EmbeddedStore::ReplayLog() {
  if (!FileExists(log_path_)) return Status::Ok();
  TERN_ASSIGN_OR_RETURN(std::string data, ReadFile(log_path_));
  const uint64_t snapshot_seq = seq_;
  size_t off = 0;
  while (off < data.size()) {
    const size_t left = data.size() - off;
    std::string why;
    uint32_t len = 0;
    if (left < kRecordHeader) {
      why = "truncated record header";
    } else {
      Reader h(std::string_view(data).substr(off, kRecordHeader));
      len = h.U32();
      uint32_t crc = h.U32();
      if (len == 0 || len > kMaxRecordBytes) {
        why = "bad record length " + std::to_string(len);
      } else if (len > left - kRecordHeader) {
        why = "record runs past the end of the file";
      } else {
        uint32_t actual = Crc32c(data.data() + off, 4);
        actual = Crc32c(data.data() + off + kRecordHeader, len, actual);
        if (actual != crc) why = "checksum mismatch";
      }
    }
    if (why.empty()) {
      Mutation m;
      if (!DecodeMutation(std::string_view(data).substr(off + kRecordHeader, len), &m)) {
        return DataLossError("embedded store: " + log_path_ + ": malformed record at offset " +
                             std::to_string(off));
      }
      if (m.seq > snapshot_seq) {
        if (m.seq <= seq_) {
          return DataLossError("embedded store: " + log_path_ + ": record at offset " +
                               std::to_string(off) + " is out of sequence (" +
                               std::to_string(m.seq) + " after " + std::to_string(seq_) + ")");
        }
        seq_ = m.seq;
        ApplyMutation(m, /*notify=*/false);
      }
      off += kRecordHeader + len;
      continue;
    }
    // A bad record is a torn tail if nothing valid can follow it: it reaches the end
    // of the file, or only zeros (preallocated, never written) follow.
    const bool reaches_end = left < kRecordHeader || uint64_t{kRecordHeader} + len >= left;
    const bool zeros = std::all_of(data.begin() + static_cast<std::ptrdiff_t>(off), data.end(),
                                   [](char c) { return c == 0; });
    if (!reaches_end && !zeros) {
      return DataLossError("embedded store: " + log_path_ + ": corrupt record at offset " +
                           std::to_string(off) + " (" + why + ") with " +
                           std::to_string(left) + " bytes after it; refusing to drop them");
    }
    TERN_LOG(WARN) << "embedded store: " << log_path_ << ": dropping a torn last record at offset "
                   << off << " (" << why << ", " << left << " bytes)";
    if (::truncate(log_path_.c_str(), static_cast<off_t>(off)) != 0) {
      return ErrnoError("embedded store: truncate " + log_path_, errno);
    }
    break;
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- commit

Status EmbeddedStore::Commit(Mutation m) {
  if (!broken_.ok()) return broken_;
  m.seq = seq_ + 1;
  if (log_fd_ >= 0) {
    const std::string rec = FrameRecord(EncodeMutation(m));
    Status w = WriteFully(log_fd_, rec);
    if (w.ok() && options_.sync && ::fdatasync(log_fd_) != 0) {
      w = ErrnoError("fdatasync " + log_path_, errno);
    }
    if (!w.ok()) {
      // Undo a partial append so later records do not follow garbage.
      if (::ftruncate(log_fd_, static_cast<off_t>(log_bytes_)) != 0) {
        broken_ = DataLossError("embedded store: " + log_path_ +
                                ": a failed append could not be undone; reopen the store");
      }
      return w.WithPrefix("embedded store");
    }
    log_bytes_ += rec.size();
  }
  seq_ = m.seq;
  ApplyMutation(m, /*notify=*/true);
  if (log_fd_ >= 0 && log_bytes_ > options_.compact_log_bytes) {
    Status c = CompactLocked();
    if (!c.ok()) TERN_LOG(WARN) << "embedded store: compaction failed: " << c;
  }
  return Status::Ok();
}

void EmbeddedStore::ApplyMutation(const Mutation& m, bool notify) {
  if (m.grant != 0) {
    LeaseState& lease = leases_[m.grant];
    lease.ttl_ms = m.grant_ttl_ms;
    lease.deadline_nanos = MonoNanos() + m.grant_ttl_ms * 1'000'000;
    next_lease_ = std::max(next_lease_, m.grant + 1);
  }
  for (const WatchEvent& e : m.events) {
    auto it = kvs_.find(e.kv.key);
    if (it != kvs_.end() && it->second.lease != 0) {
      auto l = leases_.find(it->second.lease);
      if (l != leases_.end()) l->second.keys.erase(e.kv.key);
    }
    if (e.type == WatchEvent::Type::kPut) {
      if (e.kv.lease != 0) leases_[e.kv.lease].keys.insert(e.kv.key);
      kvs_[e.kv.key] = e.kv;
    } else if (it != kvs_.end()) {
      kvs_.erase(it);
    }
  }
  if (m.revoke != 0) leases_.erase(m.revoke);
  if (m.revision == 0) return;
  revision_ = m.revision;
  history_.emplace_back(m.revision, m.events);
  while (history_.size() > options_.history_limit) {
    compacted_ = history_.front().first;
    history_.pop_front();
  }
  if (!notify) return;
  for (const auto& [id, w] : watchers_) {
    if (m.revision <= w->after) continue;
    std::vector<WatchEvent> mine;
    for (const WatchEvent& e : m.events) {
      if (HasPrefix(e.kv.key, w->prefix)) mine.push_back(e);
    }
    if (!mine.empty()) queue_.emplace_back(w, std::move(mine));
  }
  dispatch_cv_.Signal();
}

Status EmbeddedStore::CompactLocked() {
  if (dir_.empty()) return Status::Ok();
  TERN_RETURN_IF_ERROR(WriteFileAtomic(snap_path_, EncodeSnapshot()));
  // The snapshot covers every logged record (by sequence number), so a crash from here
  // on only leaves records that replay skips.
  TERN_RETURN_IF_ERROR(WriteFileAtomic(log_path_, ""));
  int fd = ::open(log_path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    broken_ = ErrnoError("embedded store: reopen " + log_path_, errno);
    return broken_;
  }
  ::close(log_fd_);
  log_fd_ = fd;
  log_bytes_ = 0;
  return Status::Ok();
}

Status EmbeddedStore::CompactForTest() {
  MutexLock l(&mu_);
  return CompactLocked();
}

uint64_t EmbeddedStore::LogBytesForTest() const {
  MutexLock l(&mu_);
  return log_bytes_;
}

// ---------------------------------------------------------------- kv

std::string EmbeddedStore::Describe() const {
  return dir_.empty() ? "embedded (in memory)" : "embedded (" + dir_ + ")";
}

Result<int64_t> EmbeddedStore::Put(std::string_view key, std::string_view value, LeaseId lease) {
  Result<ApplyResult> r = Apply({}, {Op::Put(std::string(key), std::string(value), lease)});
  if (!r.ok()) return r.status();
  return r->revision;
}

Result<std::optional<KeyValue>> EmbeddedStore::Get(std::string_view key) {
  MutexLock l(&mu_);
  auto it = kvs_.find(key);
  if (it == kvs_.end()) return std::optional<KeyValue>();
  return std::optional<KeyValue>(it->second);
}

Result<RangeResult> EmbeddedStore::Range(std::string_view prefix) {
  MutexLock l(&mu_);
  RangeResult r;
  r.revision = revision_;
  for (auto it = kvs_.lower_bound(prefix); it != kvs_.end() && HasPrefix(it->first, prefix); ++it) {
    r.kvs.push_back(it->second);
  }
  return r;
}

Result<int64_t> EmbeddedStore::Delete(std::string_view key) {
  MutexLock l(&mu_);
  auto it = kvs_.find(key);
  if (it == kvs_.end()) return int64_t{0};
  Mutation m;
  m.revision = revision_ + 1;
  WatchEvent e;
  e.type = WatchEvent::Type::kDelete;
  e.kv.key = std::string(key);
  e.kv.mod_revision = m.revision;
  m.events.push_back(std::move(e));
  TERN_RETURN_IF_ERROR(Commit(std::move(m)));
  return int64_t{1};
}

Result<ClusterStore::ApplyResult> EmbeddedStore::Apply(const std::vector<Compare>& compares,
                                                       const std::vector<Op>& ops) {
  MutexLock l(&mu_);
  // Validate first, like etcd: a put may not repeat a key or fall in a deleted range.
  std::set<std::string_view> put_keys;
  for (const Op& op : ops) {
    if (op.type != Op::Type::kPut) continue;
    if (op.key.empty()) return InvalidArgumentError("embedded store: empty key in a put");
    if (!put_keys.insert(op.key).second) {
      return InvalidArgumentError("embedded store: key '" + op.key + "' is put twice in one Apply");
    }
    if (op.lease != 0 && leases_.count(op.lease) == 0) {
      return NotFoundError("embedded store: lease " + std::to_string(op.lease) + " not found");
    }
  }
  for (const Op& op : ops) {
    if (op.type == Op::Type::kPut) continue;
    for (std::string_view k : put_keys) {
      if (op.type == Op::Type::kDelete ? k == op.key : HasPrefix(k, op.key)) {
        return InvalidArgumentError("embedded store: key '" + std::string(k) +
                                    "' is both put and deleted in one Apply");
      }
    }
  }
  for (const Compare& c : compares) {
    auto it = kvs_.find(c.key);
    const int64_t mod = it == kvs_.end() ? 0 : it->second.mod_revision;
    if (mod != c.mod_revision) return ApplyResult{false, revision_};
  }
  Mutation m;
  const int64_t rev = revision_ + 1;
  std::set<std::string> deleted;
  auto del = [&](const std::string& key) {
    if (!deleted.insert(key).second) return;
    WatchEvent e;
    e.type = WatchEvent::Type::kDelete;
    e.kv.key = key;
    e.kv.mod_revision = rev;
    m.events.push_back(std::move(e));
  };
  for (const Op& op : ops) {
    switch (op.type) {
      case Op::Type::kPut: {
        WatchEvent e;
        e.kv.key = op.key;
        e.kv.value = op.value;
        auto it = kvs_.find(op.key);
        e.kv.create_revision = it == kvs_.end() ? rev : it->second.create_revision;
        e.kv.mod_revision = rev;
        e.kv.lease = op.lease;
        m.events.push_back(std::move(e));
        break;
      }
      case Op::Type::kDelete:
        if (kvs_.count(op.key) != 0) del(op.key);
        break;
      case Op::Type::kDeletePrefix:
        for (auto it = kvs_.lower_bound(op.key); it != kvs_.end() && HasPrefix(it->first, op.key);
             ++it) {
          del(it->first);
        }
        break;
    }
  }
  if (m.events.empty()) return ApplyResult{true, revision_};  // nothing changed: no revision
  m.revision = rev;
  TERN_RETURN_IF_ERROR(Commit(std::move(m)));
  return ApplyResult{true, rev};
}

// ---------------------------------------------------------------- leases

Result<LeaseId> EmbeddedStore::GrantLease(std::chrono::milliseconds ttl) {
  if (ttl.count() <= 0) return InvalidArgumentError("embedded store: lease TTL must be > 0");
  MutexLock l(&mu_);
  Mutation m;
  m.grant = next_lease_;
  m.grant_ttl_ms = ttl.count();
  const LeaseId id = m.grant;
  TERN_RETURN_IF_ERROR(Commit(std::move(m)));
  timer_cv_.Signal();
  return id;
}

Status EmbeddedStore::KeepAlive(LeaseId lease) {
  MutexLock l(&mu_);
  auto it = leases_.find(lease);
  if (it == leases_.end()) {
    return NotFoundError("embedded store: lease " + std::to_string(lease) + " not found");
  }
  it->second.deadline_nanos = MonoNanos() + it->second.ttl_ms * 1'000'000;
  return Status::Ok();
}

Status EmbeddedStore::Revoke(LeaseId lease) {
  MutexLock l(&mu_);
  if (leases_.count(lease) == 0) {
    return NotFoundError("embedded store: lease " + std::to_string(lease) + " not found");
  }
  return Commit(RevokeMutation(lease));
}

Mutation EmbeddedStore::RevokeMutation(LeaseId lease) {
  Mutation m;
  m.revoke = lease;
  const LeaseState& state = leases_.at(lease);
  if (state.keys.empty()) return m;
  m.revision = revision_ + 1;
  for (const std::string& key : state.keys) {
    WatchEvent e;
    e.type = WatchEvent::Type::kDelete;
    e.kv.key = key;
    e.kv.mod_revision = m.revision;
    m.events.push_back(std::move(e));
  }
  return m;
}

void EmbeddedStore::TimerLoop() {
  MutexLock l(&mu_);
  while (!closing_) {
    const int64_t now = MonoNanos();
    int64_t next = 0;
    LeaseId due = 0;
    for (const auto& [id, lease] : leases_) {
      if (lease.deadline_nanos <= now) {
        due = id;
        break;
      }
      if (next == 0 || lease.deadline_nanos < next) next = lease.deadline_nanos;
    }
    if (due != 0) {
      Status s = Commit(RevokeMutation(due));
      if (!s.ok()) {
        TERN_LOG(ERROR) << "embedded store: expiring lease " << due << ": " << s;
        leases_[due].deadline_nanos = now + 1'000'000'000;  // try again later
      }
      continue;
    }
    if (next == 0) {
      timer_cv_.Wait(&mu_);
    } else {
      timer_cv_.WaitFor(&mu_, std::chrono::nanoseconds(next - now));
    }
  }
}

// ---------------------------------------------------------------- watches

Result<std::unique_ptr<Watch>> EmbeddedStore::WatchPrefix(std::string_view prefix,
                                                          int64_t after_revision,
                                                          WatchCallback callback) {
  if (after_revision < 0) {
    return InvalidArgumentError("embedded store: after_revision must be >= 0");
  }
  if (!callback) return InvalidArgumentError("embedded store: a watch needs a callback");
  MutexLock l(&mu_);
  if (after_revision == 0) after_revision = revision_;
  if (after_revision < compacted_) {
    return OutOfRangeError("embedded store: revision " + std::to_string(after_revision) +
                           " has been compacted (events are kept after revision " +
                           std::to_string(compacted_) + ")");
  }
  auto w = std::make_shared<WatcherState>();
  w->id = next_watch_++;
  w->prefix = std::string(prefix);
  w->after = after_revision;
  w->callback = std::move(callback);
  std::vector<WatchEvent> catch_up;
  for (const auto& [rev, events] : history_) {
    if (rev <= after_revision) continue;
    for (const WatchEvent& e : events) {
      if (HasPrefix(e.kv.key, w->prefix)) catch_up.push_back(e);
    }
  }
  if (!catch_up.empty()) {
    queue_.emplace_back(w, std::move(catch_up));
    dispatch_cv_.Signal();
  }
  watchers_[w->id] = w;
  return std::unique_ptr<Watch>(new WatchHandle(this, std::move(w)));
}

void EmbeddedStore::DispatchLoop() {
  for (;;) {
    std::shared_ptr<WatcherState> w;
    std::vector<WatchEvent> events;
    {
      MutexLock l(&mu_);
      while (!closing_ && queue_.empty()) dispatch_cv_.Wait(&mu_);
      if (closing_) return;
      w = std::move(queue_.front().first);
      events = std::move(queue_.front().second);
      queue_.pop_front();
    }
    MutexLock cl(&w->callback_mu);
    if (!w->cancelled.load()) w->callback(Status::Ok(), std::move(events));
  }
}

void EmbeddedStore::CancelWatch(const std::shared_ptr<WatcherState>& w) {
  {
    MutexLock l(&mu_);
    watchers_.erase(w->id);
    queue_.erase(std::remove_if(queue_.begin(), queue_.end(),
                                [&](const auto& item) { return item.first == w; }),
                 queue_.end());
  }
  w->cancelled.store(true);
  // Wait out a callback running on the dispatch thread (another watch's callback may
  // destroy this handle from that thread: then none of ours is running).
  if (std::this_thread::get_id() != dispatch_thread_id_) {
    MutexLock cl(&w->callback_mu);
  }
}

}  // namespace tern::store
