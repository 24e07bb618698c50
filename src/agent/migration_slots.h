// Same-host live migration through shared memory (docs/design/migration.md, "Same-host
// migration through shared memory"; wire: docs/formats/migration.md): the slots a source
// agent's worker copies page batches into, so that the migration connection carries a
// 16-byte 'slot' frame per batch instead of the batch.
//
//   MigSlots        kMigSlots slots of kMigSlotBytes in one memfd, sealed against shrinking
//                   and growing, mapped MAP_SHARED. The target creates it (Create); the source
//                   maps the descriptor it receives (Attach, which checks seals and size, so a
//                   target cannot make the source's copies fault with SIGBUS).
//   MigSlotServer   the target's Unix socket `<shm socket path>.mig`: a connection presents a
//                   token the target gave out on the migration connection ('slots') and gets
//                   the memfd over SCM_RIGHTS. Tokens are single-use.
//   FetchMigSlots   the source's side of that handshake.
//
// Who owns what: a MigSlots is shared (shared_ptr) by whoever uses it: the migration
// connection on the target, the migration and the agent's cache on the source. Its bytes
// are written by the source and read by the target, one slot at a time, under the 'slot'
// frame protocol (a slot is the source's from the target's answer until its next 'slot'
// frame); neither side trusts what the other wrote: the target copies a batch's head out
// of the slot before it checks it.
// Thread-safety: MigSlots is immutable after creation; MigSlotServer is thread-safe.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "core/mutex.h"
#include "core/status.h"
#include "transport/socket.h"

namespace tern::agent {

inline constexpr size_t kMigSlots = 6;
// Room before a slot's pages for the frame's memory size (8 bytes) and the head of a batch
// of up to 1,024 pages (24 + 4 × 1,024 bytes).
inline constexpr size_t kMigSlotHeadRoom = 8192;
inline constexpr size_t kMigSlotBytes = (size_t{4} << 20) + kMigSlotHeadRoom;
inline constexpr size_t kMigSlotTokenBytes = 16;

class MigSlots {
 public:
  // A new set (target). `populate`: fault every page in now (MADV_POPULATE_WRITE), so that
  // neither side takes a page fault on it later (the warm set of an agent with a memory
  // reserve); otherwise the source's first copies fault it in.
  static Result<std::shared_ptr<MigSlots>> Create(bool populate);
  // Maps a set received from a target (source). kInvalidArgument when `fd` is not a memfd
  // sealed against shrinking, or smaller than the set.
  static Result<std::shared_ptr<MigSlots>> Attach(transport::UniqueFd fd);
  ~MigSlots();
  MigSlots(const MigSlots&) = delete;
  MigSlots& operator=(const MigSlots&) = delete;

  char* slot(size_t i) const { return base_ + i * kMigSlotBytes; }
  int fd() const { return fd_.get(); }
  // Whether `fd` is this set's memfd (same inode): a source keeps its mapping of a target's
  // warm set and maps nothing when the target hands the same set over again.
  bool SameFile(int fd) const;

 private:
  MigSlots(transport::UniqueFd fd, char* base);
  transport::UniqueFd fd_;
  char* base_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// The target's `.mig` socket. One thread accepts and serves each connection once its hello
// has arrived (a handshake is two small messages), so a silent peer holds up no other: it is
// dropped after 5 s. Each gets the set its token names, or a refusal.
class MigSlotServer {
 public:
  // Listens on `path` (a stale socket file there is replaced).
  static Result<std::unique_ptr<MigSlotServer>> Start(const std::string& path);
  ~MigSlotServer();  // stops accepting, removes the socket file

  const std::string& path() const { return path_; }
  // A fresh random token for `slots`, valid for one handshake by process `peer` (checked
  // with SO_PEERCRED: a set is only ever mapped by the process it was chosen for) until it
  // is used or Revoke()d.
  std::string Offer(std::shared_ptr<MigSlots> slots, pid_t peer) EXCLUDES(mu_);
  void Revoke(const std::string& token) EXCLUDES(mu_);

 private:
  explicit MigSlotServer(std::string path) : path_(std::move(path)) {}
  void AcceptLoop();
  void Handshake(int fd);

  const std::string path_;
  transport::UniqueFd listen_;  // non-blocking
  transport::UniqueFd stop_;    // eventfd: written by the destructor
  std::thread accept_;
  Mutex mu_;
  struct Offered {
    std::shared_ptr<MigSlots> slots;
    pid_t peer;
  };
  std::map</*token*/ std::string, Offered> offered_ GUARDED_BY(mu_);
};

// The source's side: connects to `path`, presents `token` and returns the target's set:
// `cached` when the target handed the same memfd over again (no new mapping, no faults),
// else a new mapping. kUnavailable when the socket cannot be reached; the target's
// refusal (an unknown token: kPermissionDenied) with its message.
Result<std::shared_ptr<MigSlots>> FetchMigSlots(const std::string& path, const std::string& token,
                                                std::shared_ptr<MigSlots> cached);

// The payload of a 'slot' frame (16 bytes, little-endian): the slot, where in it the
// bytes start and how many there are (the frame's memory size and a page batch, as in a
// 'pages' payload), and the frame's number on its connection (0, 1, 2, ...: a replayed or
// skipped frame is refused).
struct SlotFrame {
  uint32_t index = 0;
  uint32_t offset = 0;
  uint32_t length = 0;
  uint32_t seq = 0;
};
std::string EncodeSlotFrame(const SlotFrame& s);
Result<SlotFrame> DecodeSlotFrame(std::string_view payload);

}  // namespace tern::agent
