#include "wasm/dirty_tracker.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tern::wasm {
namespace {

constexpr size_t kOsPage = 4096;

// Kernel ABI newer than Debian 12's uapi headers (Linux 6.7+: include/uapi/linux/fs.h
// and userfaultfd.h). Named with our own prefix so newer headers do not clash.
constexpr uint64_t kUffdFeatureWpUnpopulated = 1u << 13;
constexpr uint64_t kUffdFeatureWpAsync = 1u << 15;

struct PageRegion {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};

struct PmScanArg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};
static_assert(sizeof(PageRegion) == 24);
static_assert(sizeof(PmScanArg) == 96);

constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kPmScanWpMatching = 1u << 0;
constexpr uint64_t kPmScanCheckWpAsync = 1u << 1;
constexpr uint64_t kPageIsWritten = 1u << 1;
constexpr uint64_t kPageIsPresent = 1u << 3;
constexpr uint64_t kPageIsSwapped = 1u << 4;

bool IsPowerOfTwo(size_t v) { return v != 0 && (v & (v - 1)) == 0; }

Status CheckRange(uint8_t* base, size_t bytes, size_t page_bytes) {
  if (!IsPowerOfTwo(page_bytes) || page_bytes < kOsPage) {
    return InvalidArgumentError(
        fmt::format("dirty tracker page size {} is not a power of two >= 4096", page_bytes));
  }
  if (reinterpret_cast<uintptr_t>(base) % kOsPage != 0) {
    return InvalidArgumentError("dirty tracker range is not 4096-aligned");
  }
  if (bytes % kOsPage != 0) {
    return InvalidArgumentError(
        fmt::format("dirty tracker range of {} bytes is not a whole number of 4 KiB pages", bytes));
  }
  if (bytes / page_bytes > UINT32_MAX) return InvalidArgumentError("dirty tracker range too large");
  return Status::Ok();
}

// Adds page index `p` to `out` unless it is already the last element (regions arrive in
// ascending order, so duplicates are adjacent).
void PushUnique(std::vector<uint32_t>* out, uint32_t p) {
  if (out->empty() || out->back() < p) out->push_back(p);
}

class UffdTracker final : public DirtyTracker {
 public:
  UffdTracker(uint8_t* base, size_t bytes, size_t page_bytes, int uffd, int pagemap)
      : base_(base), bytes_(bytes), page_bytes_(page_bytes), uffd_(uffd), pagemap_(pagemap) {
    regions_.resize(256);
  }
  ~UffdTracker() override {
    if (bytes_ > 0) {
      uffdio_range range{reinterpret_cast<uint64_t>(base_), bytes_};
      ::ioctl(uffd_, UFFDIO_UNREGISTER, &range);  // fails harmlessly if already unmapped
    }
    ::close(pagemap_);
    ::close(uffd_);
  }
  UffdTracker(const UffdTracker&) = delete;
  UffdTracker& operator=(const UffdTracker&) = delete;

  Kind kind() const override { return Kind::kUffdWriteProtect; }
  size_t page_bytes() const override { return page_bytes_; }
  size_t bytes() const override { return bytes_; }

  // Registers [base+from, base+to) for write-protect tracking and protects it.
  Status Arm(size_t from, size_t to) {
    if (from == to) return Status::Ok();
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<uint64_t>(base_ + from);
    reg.range.len = to - from;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (::ioctl(uffd_, UFFDIO_REGISTER, &reg) != 0) {
      // E.g. a file mapping, or a range another tracker holds: Create() falls back.
      int err = errno;
      return UnimplementedError(
          fmt::format("userfaultfd cannot write-protect this range: {}", std::strerror(err)));
    }
    if ((reg.ioctls & (uint64_t{1} << _UFFDIO_WRITEPROTECT)) == 0) {
      return UnimplementedError("userfaultfd cannot write-protect this memory");
    }
    // Pages already written in a range added by Grow() count as dirty: collect them
    // (and protect them, atomically) before protecting the rest.
    if (from > 0) TERN_RETURN_IF_ERROR(Scan(from, to, /*populated_only=*/true, /*rearm=*/true, &pending_));
    uffdio_writeprotect wp{};
    wp.range = reg.range;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (::ioctl(uffd_, UFFDIO_WRITEPROTECT, &wp) != 0) {
      return ErrnoError("userfaultfd write-protect", errno);
    }
    return Status::Ok();
  }

  // An empty PAGEMAP_SCAN: checks that the kernel has the ioctl.
  Status Probe() {
    PmScanArg arg{};
    arg.size = sizeof(arg);
    arg.flags = kPmScanWpMatching | kPmScanCheckWpAsync;
    arg.start = arg.end = reinterpret_cast<uint64_t>(base_);
    arg.vec = reinterpret_cast<uint64_t>(regions_.data());
    arg.vec_len = regions_.size();
    arg.category_mask = kPageIsWritten;
    arg.return_mask = kPageIsWritten;
    if (::ioctl(pagemap_, kPagemapScan, &arg) < 0) {
      int err = errno;
      return UnimplementedError(fmt::format(
          "kernel lacks the PAGEMAP_SCAN ioctl (Linux >= 6.7 needed): {}", std::strerror(err)));
    }
    return Status::Ok();
  }

  Result<std::vector<uint32_t>> Collect() override { return Report(/*rearm=*/true); }
  Result<std::vector<uint32_t>> Peek() override { return Report(/*rearm=*/false); }

  Status Rearm() override {
    pending_.clear();
    return Scan(0, bytes_, /*populated_only=*/false, /*rearm=*/true, /*out=*/nullptr);
  }

  Status Grow(size_t new_bytes) override {
    if (new_bytes < bytes_) return InvalidArgumentError("dirty tracker range cannot shrink");
    TERN_RETURN_IF_ERROR(CheckRange(base_, new_bytes, page_bytes_));
    size_t old = bytes_;
    TERN_RETURN_IF_ERROR(Arm(old, new_bytes));
    bytes_ = new_bytes;
    return Status::Ok();
  }

 private:
  // The pages written since the last re-arm (with `rearm`, starting a new interval).
  Result<std::vector<uint32_t>> Report(bool rearm) {
    std::vector<uint32_t> out;
    if (rearm) {
      out.swap(pending_);
    } else {
      out = pending_;
    }
    std::vector<uint32_t> scanned;
    TERN_RETURN_IF_ERROR(Scan(0, bytes_, /*populated_only=*/false, rearm, &scanned));
    if (out.empty()) return scanned;
    // Merge the two ascending lists.
    std::vector<uint32_t> merged;
    merged.reserve(out.size() + scanned.size());
    size_t i = 0, j = 0;
    while (i < out.size() || j < scanned.size()) {
      uint32_t v = (j == scanned.size() || (i < out.size() && out[i] < scanned[j])) ? out[i++]
                                                                                    : scanned[j++];
      PushUnique(&merged, v);
    }
    return merged;
  }

  // Reports the written pages of [base+from, base+to) into `out` (as page_bytes
  // indices; none when `out` is null: the kernel's exclusive write-protect walk) and,
  // with `rearm`, write-protects them again. A page counts as written when its entry is
  // not write-protected; that includes never-populated entries without a uffd-wp marker
  // (the kernel's fast path for this exact query), which is right for a range armed by
  // UFFDIO_WRITEPROTECT (every entry has a marker, and one that lost it was zapped, so
  // its content changed) but not for a range just added by Grow(): there
  // `populated_only` restricts the scan to present or swapped pages.
  Status Scan(size_t from, size_t to, bool populated_only, bool rearm,
              std::vector<uint32_t>* out) {
    uint64_t start = reinterpret_cast<uint64_t>(base_ + from);
    const uint64_t end = reinterpret_cast<uint64_t>(base_ + to);
    const uint64_t base = reinterpret_cast<uint64_t>(base_);
    while (start < end) {
      PmScanArg arg{};
      arg.size = sizeof(arg);
      arg.flags = rearm ? kPmScanWpMatching | kPmScanCheckWpAsync : kPmScanCheckWpAsync;
      arg.start = start;
      arg.end = end;
      if (out != nullptr) {
        arg.vec = reinterpret_cast<uint64_t>(regions_.data());
        arg.vec_len = regions_.size();
      }
      arg.category_mask = kPageIsWritten;
      if (populated_only) arg.category_anyof_mask = kPageIsPresent | kPageIsSwapped;
      arg.return_mask = kPageIsWritten;
      int n = ::ioctl(pagemap_, kPagemapScan, &arg);
      if (n < 0) {
        int err = errno;
        if (err == ENOTTY || err == EINVAL || err == EOPNOTSUPP) {
          return UnimplementedError(fmt::format("PAGEMAP_SCAN: {}", std::strerror(err)));
        }
        return ErrnoError("PAGEMAP_SCAN", err);
      }
      for (int i = 0; out != nullptr && i < n; ++i) {
        const PageRegion& r = regions_[i];
        uint64_t first = (r.start - base) / page_bytes_;
        uint64_t last = (r.end - 1 - base) / page_bytes_;
        for (uint64_t p = first; p <= last; ++p) PushUnique(out, static_cast<uint32_t>(p));
      }
      if (arg.walk_end <= start) return InternalError("PAGEMAP_SCAN made no progress");
      start = arg.walk_end;
    }
    return Status::Ok();
  }

  uint8_t* const base_;
  size_t bytes_;
  const size_t page_bytes_;
  const int uffd_;
  const int pagemap_;
  std::vector<PageRegion> regions_;
  std::vector<uint32_t> pending_;  // written pages found in ranges added by Grow()
};

class ShadowTracker final : public DirtyTracker {
 public:
  ShadowTracker(uint8_t* base, size_t bytes, size_t page_bytes)
      : base_(base), page_bytes_(page_bytes), shadow_(base, base + bytes) {}

  Kind kind() const override { return Kind::kShadowCompare; }
  size_t page_bytes() const override { return page_bytes_; }
  size_t bytes() const override { return shadow_.size(); }

  Result<std::vector<uint32_t>> Collect() override {
    std::vector<uint32_t> out;
    const size_t n = shadow_.size();
    for (size_t off = 0; off < n; off += page_bytes_) {
      size_t len = std::min(page_bytes_, n - off);
      if (std::memcmp(base_ + off, shadow_.data() + off, len) != 0) {
        std::memcpy(shadow_.data() + off, base_ + off, len);
        out.push_back(static_cast<uint32_t>(off / page_bytes_));
      }
    }
    return out;
  }

  // The shadow is brought up to date by every report: a page is reported once.
  Result<std::vector<uint32_t>> Peek() override { return Collect(); }
  Status Rearm() override { return Status::Ok(); }

  Status Grow(size_t new_bytes) override {
    if (new_bytes < shadow_.size())
      return InvalidArgumentError("dirty tracker range cannot shrink");
    TERN_RETURN_IF_ERROR(CheckRange(base_, new_bytes, page_bytes_));
    shadow_.resize(new_bytes, 0);
    return Status::Ok();
  }

 private:
  uint8_t* const base_;
  const size_t page_bytes_;
  std::vector<uint8_t> shadow_;
};

}  // namespace

std::string_view DirtyTrackerKindName(DirtyTracker::Kind kind) {
  switch (kind) {
    case DirtyTracker::Kind::kUffdWriteProtect:
      return "uffd-wp-async";
    case DirtyTracker::Kind::kShadowCompare:
      return "shadow-compare";
  }
  return "?";
}

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::CreateUffd(uint8_t* base, size_t bytes,
                                                               size_t page_bytes) {
  TERN_RETURN_IF_ERROR(CheckRange(base, bytes, page_bytes));
  int uffd =
      static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (uffd < 0) {
    int err = errno;
    return UnimplementedError(fmt::format("userfaultfd unavailable: {}", std::strerror(err)));
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kUffdFeatureWpAsync | kUffdFeatureWpUnpopulated;
  if (::ioctl(uffd, UFFDIO_API, &api) != 0) {
    int err = errno;
    ::close(uffd);
    return UnimplementedError(fmt::format(
        "userfaultfd lacks WP_ASYNC/WP_UNPOPULATED (Linux >= 6.7 needed): {}", std::strerror(err)));
  }
  int pagemap = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (pagemap < 0) {
    int err = errno;
    ::close(uffd);
    return UnimplementedError(fmt::format("/proc/self/pagemap: {}", std::strerror(err)));
  }
  auto tracker = std::make_unique<UffdTracker>(base, 0, page_bytes, uffd, pagemap);
  TERN_RETURN_IF_ERROR(tracker->Probe());
  TERN_RETURN_IF_ERROR(tracker->Grow(bytes));
  return std::unique_ptr<DirtyTracker>(std::move(tracker));
}

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::CreateShadow(uint8_t* base, size_t bytes,
                                                                 size_t page_bytes) {
  TERN_RETURN_IF_ERROR(CheckRange(base, bytes, page_bytes));
  return std::unique_ptr<DirtyTracker>(new ShadowTracker(base, bytes, page_bytes));
}

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::Create(uint8_t* base, size_t bytes,
                                                           size_t page_bytes) {
  Result<std::unique_ptr<DirtyTracker>> t = CreateUffd(base, bytes, page_bytes);
  if (t.ok() || t.status().code() != StatusCode::kUnimplemented) return t;
  return CreateShadow(base, bytes, page_bytes);
}

}  // namespace tern::wasm
