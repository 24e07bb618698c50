// ShmRing: the raw single-producer/single-consumer byte ring of limit_shm — the
// physical limit of a request/response over shared memory between two processes. No
// framing beyond a length, no allocation, nothing of tern: what any shared-memory
// transport has to do at least (copy in, publish, wake, copy out).
//
// Layout (one ring; limit_shm puts two of them, one per direction, in one memfd):
//
//   offset 0    RingHeader (256 bytes): magic, version, capacity, head, tail,
//               wake_seq, consumer_sleeping — each index on a cache line of its own
//   offset 256  `capacity` data bytes (a power of two)
//
// A record is a uint32 length, 4 bytes of padding, then the payload, padded to 8
// bytes; records wrap around the end of the data (the payload is copied in two parts).
// head = bytes ever written (only the producer stores it), tail = bytes ever read (only
// the consumer stores it); head - tail bytes are in the ring.
//
// Waiting: the consumer spins `spin` iterations checking head, then sets
// consumer_sleeping and futex-waits on wake_seq; the producer, after publishing a
// record, bumps wake_seq and wakes it only when consumer_sleeping is set. The fences
// on both sides (Dekker) guarantee that either the consumer sees the record or the
// producer sees the sleeper. With spin = 0 it never spins (use that when both ends
// share a vCPU: a spinning end only delays the one it waits for).
//
// Thread-safety: one producer and one consumer (any processes) per ring; Push() only
// from the producer, Pop() only from the consumer. The producer never waits for space:
// the owner sizes the ring for everything it keeps in flight (Fits()).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

#include "common/bench_util.h"
#include "core/cpu.h"
#include "core/status.h"

namespace tern::bench::rpc {

// limit_shm's spin before the futex wait: ~2000 checks, each followed by a PAUSE
// (/work/shared/notes/machine.md: the best measured on these VMs). A PAUSE is slow in
// these VMs (rpc_bench reports how long the 2000 take).
inline constexpr int kLimitShmSpin = 2000;

// The indices and futex words are accessed only through std::atomic_ref.
struct RingHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t reserved0;
  uint64_t capacity;
  uint8_t pad0[40];
  alignas(64) uint64_t head;
  uint8_t pad1[56];
  alignas(64) uint64_t tail;
  uint8_t pad2[56];
  alignas(64) uint32_t wake_seq;
  uint32_t consumer_sleeping;
  uint8_t pad3[56];
};
static_assert(std::is_trivially_copyable_v<RingHeader>);
static_assert(sizeof(RingHeader) == 256);
static_assert(offsetof(RingHeader, head) == 64);
static_assert(offsetof(RingHeader, tail) == 128);
static_assert(offsetof(RingHeader, wake_seq) == 192);
static_assert(offsetof(RingHeader, consumer_sleeping) == 196);
static_assert(std::atomic_ref<uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint32_t>::is_always_lock_free);

class ShmRing {
 public:
  static constexpr uint64_t kMagic = 0x676e69526d687354;  // "TshmRing"
  static constexpr uint32_t kVersion = 1;
  static constexpr size_t kRecordHeader = 8;

  // The bytes a ring with `capacity` data bytes needs in the mapping.
  static size_t Bytes(size_t capacity) { return sizeof(RingHeader) + capacity; }
  // Space one record of `payload` bytes takes in the ring.
  static size_t RecordBytes(size_t payload) { return kRecordHeader + ((payload + 7) & ~size_t{7}); }

  // Formats a ring at `base` (Bytes(capacity) bytes, zeroed; capacity a power of two).
  static void Init(void* base, size_t capacity) {
    auto* h = static_cast<RingHeader*>(base);
    h->magic = kMagic;
    h->version = kVersion;
    h->capacity = capacity;
    h->head = 0;
    h->tail = 0;
    h->wake_seq = 0;
    h->consumer_sleeping = 0;
    std::atomic_thread_fence(std::memory_order_release);
  }

  // Attaches to a ring formatted by Init (in this or another process). `base` must stay
  // mapped while the ShmRing is used.
  static Result<ShmRing> Attach(void* base, size_t mapped_bytes) {
    auto* h = static_cast<RingHeader*>(base);
    if (mapped_bytes < sizeof(RingHeader) || h->magic != kMagic || h->version != kVersion ||
        h->capacity == 0 || (h->capacity & (h->capacity - 1)) != 0 ||
        Bytes(h->capacity) > mapped_bytes) {
      return DataLossError("not a ShmRing (bad magic, version or capacity)");
    }
    return ShmRing(h);
  }

  size_t capacity() const { return cap_; }

  // Whether `records` records of `payload` bytes fit in the ring at once.
  bool Fits(size_t records, size_t payload) const { return records * RecordBytes(payload) <= cap_; }

  // Producer: appends a record, or returns false when it does not fit now.
  bool TryPush(const void* data, uint32_t len) {
    const uint64_t head = Head().load(std::memory_order_relaxed);
    const size_t need = RecordBytes(len);
    if (cap_ - (head - tail_cache_) < need) {
      tail_cache_ = Tail().load(std::memory_order_acquire);
      if (cap_ - (head - tail_cache_) < need) return false;
    }
    const size_t at = head & (cap_ - 1);
    std::memcpy(data_ + at, &len, sizeof(len));  // never wraps: records are 8-aligned
    CopyIn((at + kRecordHeader) & (cap_ - 1), data, len);
    Head().store(head + need, std::memory_order_release);
    // Dekker with Pop(): publish head, then look for a sleeper.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (Sleeping().load(std::memory_order_relaxed) != 0) {
      WakeSeq().fetch_add(1, std::memory_order_release);
      syscall(SYS_futex, &h_->wake_seq, FUTEX_WAKE, 1, nullptr, nullptr, 0);
    }
    return true;
  }

  // Consumer, without copying: waits as Pop does, then returns the next record's
  // payload where it lies in the ring (two parts when it wraps around the end; the
  // second is empty otherwise). The record stays in the ring, the producer cannot reuse
  // its space, until Consume(). kDeadlineExceeded when nothing came in time.
  struct Peeked {
    std::span<const uint8_t> first, second;
    uint32_t len;
  };
  Result<Peeked> Peek(int spin, int64_t deadline_ns) {
    Result<Record> r = Next(spin, deadline_ns);
    if (!r.ok()) return r.status();
    const size_t first = r->len < cap_ - r->from ? r->len : cap_ - r->from;
    return Peeked{{data_ + r->from, first}, {data_, r->len - first}, r->len};
  }
  // Gives back the record Peek() returned (`len`: its length).
  void Consume(uint32_t len) {
    const uint64_t tail = Tail().load(std::memory_order_relaxed);
    Tail().store(tail + RecordBytes(len), std::memory_order_release);
  }

  // Consumer: waits (spin, then futex) for a record until NowNs() >= deadline_ns, copies
  // its payload into `out` (at most `max` bytes; the rest is dropped) and returns its
  // length. kDeadlineExceeded when nothing came in time.
  Result<uint32_t> Pop(void* out, size_t max, int spin, int64_t deadline_ns) {
    Result<Record> r = Next(spin, deadline_ns);
    if (!r.ok()) return r.status();
    CopyOut(out, r->from, r->len < max ? r->len : max);
    Tail().store(r->tail + RecordBytes(r->len), std::memory_order_release);
    return r->len;
  }

 private:
  // The next record, once one is there: the read index it starts at, where its payload
  // starts in the ring and its length.
  struct Record {
    uint64_t tail;
    size_t from;
    uint32_t len;
  };
  Result<Record> Next(int spin, int64_t deadline_ns) {
    const uint64_t tail = Tail().load(std::memory_order_relaxed);
    if (!WaitForData(tail, spin, deadline_ns)) {
      return DeadlineExceededError("no record in the shared-memory ring in time");
    }
    const size_t at = tail & (cap_ - 1);
    uint32_t len;
    std::memcpy(&len, data_ + at, sizeof(len));
    return Record{tail, (at + kRecordHeader) & (cap_ - 1), len};
  }

  explicit ShmRing(RingHeader* h)
      : h_(h), data_(reinterpret_cast<uint8_t*>(h) + sizeof(RingHeader)), cap_(h->capacity) {}

  std::atomic_ref<uint64_t> Head() const { return std::atomic_ref<uint64_t>(h_->head); }
  std::atomic_ref<uint64_t> Tail() const { return std::atomic_ref<uint64_t>(h_->tail); }
  std::atomic_ref<uint32_t> WakeSeq() const { return std::atomic_ref<uint32_t>(h_->wake_seq); }
  std::atomic_ref<uint32_t> Sleeping() const {
    return std::atomic_ref<uint32_t>(h_->consumer_sleeping);
  }

  bool WaitForData(uint64_t tail, int spin, int64_t deadline_ns) {
    for (int i = 0; i < spin; ++i) {
      if (Head().load(std::memory_order_acquire) != tail) return true;
      CpuRelax();
    }
    while (true) {
      if (Head().load(std::memory_order_acquire) != tail) return true;
      Sleeping().store(1, std::memory_order_relaxed);
      // Dekker with TryPush(): announce the sleeper, then look at head again.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      const uint32_t seq = WakeSeq().load(std::memory_order_acquire);
      if (Head().load(std::memory_order_acquire) != tail) {
        Sleeping().store(0, std::memory_order_relaxed);
        return true;
      }
      const int64_t left = deadline_ns - NowNs();
      if (left <= 0) {
        Sleeping().store(0, std::memory_order_relaxed);
        return false;
      }
      // Wake up at least every 100 ms to check the deadline.
      const int64_t wait_ns = left < 100'000'000 ? left : 100'000'000;
      timespec ts{static_cast<time_t>(wait_ns / 1'000'000'000),
                  static_cast<long>(wait_ns % 1'000'000'000)};
      syscall(SYS_futex, &h_->wake_seq, FUTEX_WAIT, seq, &ts, nullptr, 0);
      Sleeping().store(0, std::memory_order_relaxed);
    }
  }

  void CopyIn(size_t at, const void* src, size_t n) {
    const size_t first = n < cap_ - at ? n : cap_ - at;
    std::memcpy(data_ + at, src, first);
    if (n > first) std::memcpy(data_, static_cast<const uint8_t*>(src) + first, n - first);
  }
  void CopyOut(void* dst, size_t at, size_t n) const {
    const size_t first = n < cap_ - at ? n : cap_ - at;
    std::memcpy(dst, data_ + at, first);
    if (n > first) std::memcpy(static_cast<uint8_t*>(dst) + first, data_, n - first);
  }

  RingHeader* h_;
  uint8_t* data_;
  size_t cap_;
  uint64_t tail_cache_ = 0;  // the producer's last view of tail
};

}  // namespace tern::bench::rpc
