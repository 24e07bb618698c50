#include "storage/journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <chrono>
#include <thread>

#include "core/bytes.h"
#include "core/clock.h"
#include "core/crc32c.h"
#include "core/file.h"
#include "core/logging.h"
#include "core/mutex.h"

namespace tern::storage {

void AppendFramed(uint32_t magic, std::string_view body, std::string* out) {
  AppendU32(out, magic);
  AppendU32(out, static_cast<uint32_t>(body.size()));
  AppendU32(out, Crc32c(body.data(), body.size()));
  out->append(body);
}

Result<std::optional<std::string_view>> NextFramed(uint32_t magic, std::string_view bytes,
                                                   size_t* offset) {
  const size_t off = *offset;
  if (off >= bytes.size()) return std::optional<std::string_view>();
  const size_t left = bytes.size() - off;
  if (left < kFrameHeaderBytes) {
    return DataLossError(fmt::format("truncated: {} bytes left, a header takes {}", left,
                                     kFrameHeaderBytes));
  }
  const char* p = bytes.data() + off;
  if (LoadU32(p) != magic) {
    return DataLossError(fmt::format("bad magic {:#010x} (expected {:#010x})", LoadU32(p), magic));
  }
  const uint64_t len = LoadU32(p + 4);
  if (left - kFrameHeaderBytes < len) {
    return DataLossError(fmt::format("truncated: the entry says {} bytes, {} are there", len,
                                     left - kFrameHeaderBytes));
  }
  std::string_view body(p + kFrameHeaderBytes, len);
  if (Crc32c(body.data(), body.size()) != LoadU32(p + 8)) {
    return DataLossError(fmt::format("checksum mismatch in an entry of {} bytes", len));
  }
  *offset = off + kFrameHeaderBytes + len;
  return std::optional<std::string_view>(body);
}

Result<RecordHeader> ParseRecordHeader(std::string_view framed) {
  size_t off = 0;
  TERN_ASSIGN_OR_RETURN(std::optional<std::string_view> body,
                        NextFramed(kJournalRecordMagic, framed, &off));
  if (!body || off != framed.size()) {
    return InvalidArgumentError("a journal append carries exactly one record");
  }
  if (body->size() < kRecordFixedBytes) {
    return InvalidArgumentError(fmt::format("journal record of {} bytes is shorter than its {} "
                                            "byte fixed part",
                                            body->size(), kRecordFixedBytes));
  }
  RecordHeader h;
  h.seq = LoadU64(body->data());
  h.flags = static_cast<uint8_t>((*body)[8]);
  if (h.seq == 0) return InvalidArgumentError("journal record with sequence number 0");
  return h;
}

namespace {

constexpr uint32_t kEntryMagic = 0x314C'4A54;  // "TJL1"
constexpr uint8_t kEntryRecord = 1;
constexpr uint8_t kEntryBase = 2;
constexpr uint8_t kEntryDrop = 3;
constexpr uint64_t kSegmentBytes = 64u << 20;
// Group commit: instances that appended within kRecentNs are expected to append again;
// the writer waits for them at most half a sync, within these bounds.
constexpr int64_t kRecentNs = 5'000'000;
constexpr int64_t kMinGroupWaitNs = 20'000;
constexpr int64_t kMaxGroupWaitNs = 200'000;

std::string SegmentName(uint32_t n) { return fmt::format("seg-{:08}.log", n); }

}  // namespace

struct JournalStore::Impl {
  struct Rec {
    uint64_t seq;
    bool full;
    uint32_t seg;
    uint64_t off;  // of the framed record in the segment file
    uint32_t len;
  };
  struct Journal {
    uint64_t base = 0;
    uint32_t base_seg = UINT32_MAX;  // the segment holding the latest base entry
    std::vector<Rec> recs;
    uint64_t last() const { return recs.empty() ? base : recs.back().seq; }
    // Records before this are never replaced by a retry.
    uint64_t floor() const { return !recs.empty() && recs.front().full ? recs.front().seq : base; }
  };
  struct Segment {
    int fd = -1;
    uint64_t size = 0;
    uint64_t live = 0;  // entries still needed
  };
  struct Op {
    uint8_t kind;
    std::string instance;
    std::string payload;  // kind record: the framed record
    uint64_t seq = 0;     // kind base
    RecordHeader header;
    Done done;
  };

  std::string dir;
  Mutex idx_mu;
  std::map<std::string, Journal> journals GUARDED_BY(idx_mu);
  std::map<uint32_t, Segment> segs GUARDED_BY(idx_mu);
  uint32_t cur GUARDED_BY(idx_mu) = 0;  // the segment written now
  JournalStats st GUARDED_BY(idx_mu);
  Status broken GUARDED_BY(idx_mu);  // a failed write: every later operation fails

  Mutex q_mu;
  CondVar q_cv;
  std::deque<Op> queue GUARDED_BY(q_mu);
  bool stopping GUARDED_BY(q_mu) = false;
  std::thread writer;
  std::atomic<int64_t> sync_delay_ns{0};
  std::atomic<uint64_t> segment_bytes{kSegmentBytes};

  ~Impl() {
    {
      MutexLock l(&q_mu);
      stopping = true;
      q_cv.Signal();
    }
    if (writer.joinable()) writer.join();
    MutexLock l(&idx_mu);
    for (auto& [n, s] : segs) ::close(s.fd);
  }

  void Unref(uint32_t seg) REQUIRES(idx_mu) {
    auto it = segs.find(seg);
    if (it != segs.end() && it->second.live > 0) --it->second.live;
  }
  void DropRecs(Journal* j, size_t from) REQUIRES(idx_mu) {
    for (size_t i = from; i < j->recs.size(); ++i) Unref(j->recs[i].seg);
    j->recs.resize(from);
  }

  // The acceptance rules of journal.h.
  Status Check(const std::string& instance, const RecordHeader& h) REQUIRES(idx_mu) {
    if (h.full()) return Status::Ok();
    auto it = journals.find(instance);
    if (it == journals.end()) {
      return FailedPreconditionError(fmt::format(
          "this keeper has no journal of {}: record {} cannot start one (a full record is "
          "needed)",
          instance, h.seq));
    }
    const Journal& j = it->second;
    if (h.seq == j.last() + 1 || (h.seq <= j.last() && h.seq > j.floor())) return Status::Ok();
    return FailedPreconditionError(fmt::format(
        "the journal of {} ends at record {} (base {}): record {} does not follow it (a full "
        "record is needed)",
        instance, j.last(), j.floor(), h.seq));
  }

  void ApplyRecord(const std::string& instance, const RecordHeader& h, uint32_t seg, uint64_t off,
                   uint32_t len) REQUIRES(idx_mu) {
    Journal& j = journals[instance];
    if (h.full()) {
      DropRecs(&j, 0);
    } else {
      size_t keep = j.recs.size();
      while (keep > 0 && j.recs[keep - 1].seq >= h.seq) --keep;
      DropRecs(&j, keep);
    }
    j.recs.push_back(Rec{h.seq, h.full(), seg, off, len});
    ++segs[seg].live;
  }
  void ApplyBase(const std::string& instance, uint64_t seq, uint32_t seg) REQUIRES(idx_mu) {
    Journal& j = journals[instance];
    size_t n = 0;
    while (n < j.recs.size() && j.recs[n].seq <= seq) ++n;
    for (size_t i = 0; i < n; ++i) Unref(j.recs[i].seg);
    j.recs.erase(j.recs.begin(), j.recs.begin() + static_cast<std::ptrdiff_t>(n));
    j.base = std::max(j.base, seq);
    if (j.base_seg != UINT32_MAX) Unref(j.base_seg);
    j.base_seg = seg;
    ++segs[seg].live;
  }
  void ApplyDrop(const std::string& instance) REQUIRES(idx_mu) {
    auto it = journals.find(instance);
    if (it == journals.end()) return;
    DropRecs(&it->second, 0);
    if (it->second.base_seg != UINT32_MAX) Unref(it->second.base_seg);
    journals.erase(it);
  }

  // One log entry, read back at Open.
  Status Replay(std::string_view body, uint32_t seg, uint64_t body_off) REQUIRES(idx_mu) {
    if (body.size() < 2 || body.size() < size_t{2} + static_cast<uint8_t>(body[1])) {
      return DataLossError("entry too short");
    }
    const uint8_t kind = static_cast<uint8_t>(body[0]);
    const size_t idlen = static_cast<uint8_t>(body[1]);
    std::string instance(body.substr(2, idlen));
    std::string_view rest = body.substr(2 + idlen);
    switch (kind) {
      case kEntryRecord: {
        TERN_ASSIGN_OR_RETURN(RecordHeader h, ParseRecordHeader(rest));
        // Appends were checked when written; a record that no longer fits (its journal
        // was dropped in a segment deleted since) is skipped, as it was dead.
        if (!Check(instance, h).ok()) return Status::Ok();
        ApplyRecord(instance, h, seg, body_off + 2 + idlen, static_cast<uint32_t>(rest.size()));
        return Status::Ok();
      }
      case kEntryBase:
        if (rest.size() != 8) return DataLossError("base entry of the wrong size");
        ApplyBase(instance, LoadU64(rest.data()), seg);
        return Status::Ok();
      case kEntryDrop:
        ApplyDrop(instance);
        return Status::Ok();
      default:
        return DataLossError(fmt::format("unknown entry kind {}", kind));
    }
  }

  Status OpenSegment(uint32_t n) REQUIRES(idx_mu) {
    const std::string path = dir + "/" + SegmentName(n);
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoError("open " + path, errno);
    segs[n] = Segment{fd, 0, 0};
    cur = n;
    // The new file's directory entry must survive a crash as well.
    int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d >= 0) {
      (void)::fsync(d);
      ::close(d);
    }
    return Status::Ok();
  }

  void DeleteDeadSegments() REQUIRES(idx_mu) {
    for (auto it = segs.begin(); it != segs.end();) {
      if (it->first != cur && it->second.live == 0) {
        ::close(it->second.fd);
        ::unlink((dir + "/" + SegmentName(it->first)).c_str());
        it = segs.erase(it);
      } else {
        ++it;
      }
    }
  }

  void Loop() {
    std::map<std::string, int64_t> recent;  // instance -> when it last appended
    int64_t last_sync_ns = 0;
    for (;;) {
      std::deque<Op> batch;
      {
        MutexLock l(&q_mu);
        while (queue.empty() && !stopping) q_cv.Wait(&q_mu);
        if (queue.empty() && stopping) return;
        // Group commit: every instance waits for its own record before it sends the
        // next, so while more instances have been appending lately than have a record
        // queued, the others are likely on their way: wait for them a little (a fraction
        // of a sync), rather than pay one sync each.
        const int64_t now = MonoNanos();
        for (auto it = recent.begin(); it != recent.end();) {
          it = now - it->second > kRecentNs ? recent.erase(it) : std::next(it);
        }
        const int64_t until =
            now + std::clamp<int64_t>(last_sync_ns / 2, kMinGroupWaitNs, kMaxGroupWaitNs);
        while (!stopping && Distinct(queue) < recent.size()) {
          const int64_t left = until - MonoNanos();
          if (left <= 0) break;
          q_cv.WaitFor(&q_mu, std::chrono::nanoseconds(left));
        }
        batch.swap(queue);
      }
      const int64_t t0 = MonoNanos();
      for (const Op& op : batch) {
        if (op.kind == kEntryRecord) recent[op.instance] = t0;
      }
      RunBatch(batch);
      last_sync_ns = MonoNanos() - t0;
    }
  }

  static size_t Distinct(const std::deque<Op>& q) {
    std::vector<std::string_view> ids;
    for (const Op& op : q) ids.push_back(op.instance);
    std::sort(ids.begin(), ids.end());
    return static_cast<size_t>(std::unique(ids.begin(), ids.end()) - ids.begin());
  }

  // Group commit: every queued entry in one write and one fdatasync, then the answers.
  void RunBatch(std::deque<Op>& batch) {
    std::vector<std::pair<Done, Status>> answers;
    answers.reserve(batch.size());
    {
      MutexLock l(&idx_mu);
      if (!broken.ok()) {
        for (Op& op : batch) answers.emplace_back(std::move(op.done), broken);
      } else {
        Segment& seg = segs[cur];
        std::string buf;
        std::vector<size_t> written;  // indices of the ops in `buf`
        for (size_t i = 0; i < batch.size(); ++i) {
          Op& op = batch[i];
          if (op.kind == kEntryRecord) {
            Status ok = Check(op.instance, op.header);
            if (!ok.ok()) {
              ++st.refused;
              answers.emplace_back(std::move(op.done), ok);
              continue;
            }
          }
          std::string body;
          body.push_back(static_cast<char>(op.kind));
          body.push_back(static_cast<char>(op.instance.size()));
          body += op.instance;
          if (op.kind == kEntryRecord) body += op.payload;
          if (op.kind == kEntryBase) AppendU64(&body, op.seq);
          const uint64_t body_off = seg.size + buf.size() + kFrameHeaderBytes;
          AppendFramed(kEntryMagic, body, &buf);
          const uint32_t seg_n = cur;
          if (op.kind == kEntryRecord) {
            ApplyRecord(op.instance, op.header, seg_n, body_off + 2 + op.instance.size(),
                        static_cast<uint32_t>(op.payload.size()));
            ++st.appends;
          } else if (op.kind == kEntryBase) {
            ApplyBase(op.instance, op.seq, seg_n);
          } else {
            ApplyDrop(op.instance);
          }
          written.push_back(i);
        }
        Status io = Status::Ok();
        if (!buf.empty()) {
          io = WriteAll(seg.fd, buf);
          if (io.ok()) {
            if (int64_t d = sync_delay_ns.load(std::memory_order_relaxed); d > 0) {
              std::this_thread::sleep_for(std::chrono::nanoseconds(d));
            }
            if (::fdatasync(seg.fd) != 0) io = ErrnoError("fdatasync " + dir, errno);
          }
          ++st.syncs;
          st.bytes += buf.size();
          seg.size += buf.size();
        }
        if (!io.ok()) {
          // What reached the disk is unknown: fail this group and everything after it (a
          // keeper that cannot write must not acknowledge).
          broken = UnavailableError(fmt::format("the journal store of {} failed: {}", dir,
                                                io.message()));
          TERN_LOG(ERROR) << broken;
        }
        for (size_t i : written) answers.emplace_back(std::move(batch[i].done), io.ok() ? Status::Ok() : broken);
        if (io.ok() && seg.size >= segment_bytes.load(std::memory_order_relaxed)) {
          Status s = OpenSegment(cur + 1);
          if (!s.ok()) {
            broken = UnavailableError(fmt::format("the journal store of {} failed: {}", dir, s.message()));
            TERN_LOG(ERROR) << broken;
          }
        }
        DeleteDeadSegments();
        st.segments = segs.size();
      }
    }
    for (auto& [done, s] : answers) {
      if (done) done(s);
    }
  }

  static Status WriteAll(int fd, std::string_view b) {
    while (!b.empty()) {
      ssize_t n = ::write(fd, b.data(), b.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("write", errno);
      }
      b.remove_prefix(static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  void Enqueue(Op op) {
    MutexLock l(&q_mu);
    if (stopping) {
      Done d = std::move(op.done);
      if (d) d(UnavailableError("the journal store is shutting down"));
      return;
    }
    queue.push_back(std::move(op));
    q_cv.Signal();
  }

  Status RunAndWait(Op op) {
    Mutex m;
    CondVar cv;
    bool done = false;
    Status result;
    op.done = [&](Status s) {
      MutexLock l(&m);
      result = std::move(s);
      done = true;
      cv.Signal();
    };
    Enqueue(std::move(op));
    MutexLock l(&m);
    while (!done) cv.Wait(&m);
    return result;
  }
};

JournalStore::JournalStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
JournalStore::~JournalStore() = default;

Result<std::unique_ptr<JournalStore>> JournalStore::Open(const std::string& dir) {
  TERN_RETURN_IF_ERROR(MakeDirs(dir));
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  std::vector<uint32_t> found;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      unsigned n = 0;
      char tail = 0;
      if (std::sscanf(e->d_name, "seg-%8u.lo%c", &n, &tail) == 2 && tail == 'g' &&
          SegmentName(n) == e->d_name) {
        found.push_back(n);
      }
    }
    ::closedir(d);
  } else {
    return ErrnoError("opendir " + dir, errno);
  }
  std::sort(found.begin(), found.end());
  {
    MutexLock l(&impl->idx_mu);
    for (uint32_t n : found) {
      const std::string path = dir + "/" + SegmentName(n);
      TERN_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
      int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) return ErrnoError("open " + path, errno);
      impl->segs[n] = Impl::Segment{fd, bytes.size(), 0};
      size_t off = 0;
      for (;;) {
        const size_t at = off;
        Result<std::optional<std::string_view>> e = NextFramed(kEntryMagic, bytes, &off);
        Status bad = e.ok() ? Status::Ok() : e.status();
        if (e.ok() && !e->has_value()) break;
        if (e.ok()) {
          bad = impl->Replay(**e, n, at + kFrameHeaderBytes);
          if (bad.ok()) continue;
        }
        // A torn or damaged tail: nothing from here on is applied.
        TERN_LOG(WARN) << "journal " << path << ": " << bad.message() << " at offset " << at
                       << "; ignoring the last " << bytes.size() - at
                       << " bytes (a write torn by a crash, or damaged); the entries before it are kept";
        impl->st.torn_bytes += bytes.size() - at;
        if (::ftruncate(fd, static_cast<off_t>(at)) != 0) {
          return ErrnoError("ftruncate " + path, errno);
        }
        impl->segs[n].size = at;
        break;
      }
    }
    TERN_RETURN_IF_ERROR(impl->OpenSegment(found.empty() ? 1 : found.back() + 1));
    impl->DeleteDeadSegments();
    impl->st.segments = impl->segs.size();
  }
  Impl* raw = impl.get();
  impl->writer = std::thread([raw] { raw->Loop(); });
  return std::unique_ptr<JournalStore>(new JournalStore(std::move(impl)));
}

void JournalStore::Append(std::string instance, std::string framed_record, Done done) {
  Result<RecordHeader> h = ParseRecordHeader(framed_record);
  if (!h.ok()) {
    done(InvalidArgumentError(fmt::format("journal record for {}: {}", instance, h.status().message())));
    return;
  }
  if (instance.empty() || instance.size() > 255) {
    done(InvalidArgumentError("journal append: the instance id must be 1-255 bytes"));
    return;
  }
  Impl::Op op;
  op.kind = kEntryRecord;
  op.instance = std::move(instance);
  op.payload = std::move(framed_record);
  op.header = *h;
  op.done = std::move(done);
  impl_->Enqueue(std::move(op));
}

Status JournalStore::SetBase(const std::string& instance, uint64_t seq) {
  Impl::Op op;
  op.kind = kEntryBase;
  op.instance = instance;
  op.seq = seq;
  return impl_->RunAndWait(std::move(op));
}

Status JournalStore::Drop(const std::string& instance) {
  Impl::Op op;
  op.kind = kEntryDrop;
  op.instance = instance;
  return impl_->RunAndWait(std::move(op));
}

Result<std::string> JournalStore::Read(const std::string& instance, uint64_t after) {
  MutexLock l(&impl_->idx_mu);
  auto it = impl_->journals.find(instance);
  if (it == impl_->journals.end()) {
    return NotFoundError(fmt::format("no journal of {} in {}", instance, impl_->dir));
  }
  const Impl::Journal& j = it->second;
  const bool from_full = !j.recs.empty() && j.recs.front().full;
  std::string out;
  for (const Impl::Rec& r : j.recs) {
    if (!from_full && r.seq <= after) continue;
    const size_t at = out.size();
    out.resize(at + r.len);
    ssize_t n = ::pread(impl_->segs.at(r.seg).fd, out.data() + at, r.len, static_cast<off_t>(r.off));
    if (n != static_cast<ssize_t>(r.len)) {
      return DataLossError(fmt::format("journal of {}: record {} could not be read back ({})",
                                       instance, r.seq, n < 0 ? ErrnoError("pread", errno).message()
                                                              : std::string_view("short read")));
    }
  }
  return out;
}

std::optional<JournalInfo> JournalStore::Info(const std::string& instance) {
  MutexLock l(&impl_->idx_mu);
  auto it = impl_->journals.find(instance);
  if (it == impl_->journals.end()) return std::nullopt;
  JournalInfo info;
  info.instance = instance;
  info.base_seq = it->second.base;
  info.last_seq = it->second.last();
  info.records = it->second.recs.size();
  for (const Impl::Rec& r : it->second.recs) info.bytes += r.len;
  if (!it->second.recs.empty() && it->second.recs.front().full) info.full_seq = it->second.recs.front().seq;
  return info;
}

std::vector<JournalInfo> JournalStore::List() {
  std::vector<std::string> ids;
  {
    MutexLock l(&impl_->idx_mu);
    for (const auto& [id, j] : impl_->journals) ids.push_back(id);
  }
  std::vector<JournalInfo> out;
  for (const std::string& id : ids) {
    if (std::optional<JournalInfo> i = Info(id)) out.push_back(std::move(*i));
  }
  return out;
}

JournalStats JournalStore::stats() {
  MutexLock l(&impl_->idx_mu);
  return impl_->st;
}

const std::string& JournalStore::dir() const { return impl_->dir; }

void JournalStore::SetSyncDelayForTest(int64_t ns) { impl_->sync_delay_ns.store(ns); }

void JournalStore::SetSegmentBytesForTest(uint64_t bytes) { impl_->segment_bytes.store(bytes); }

}  // namespace tern::storage
