// DatasetStore: the named objects a storage device's agent keeps on its disk, grouped in
// datasets ("logs/2026-11-30.bin"). What near-data services read (tern_data_read), and
// what `tern data put/ls/rm` manage.
//
// On disk: <root>/<dataset>/<key>.obj, one file per object (docs/formats/dataset.md):
//   header  "TDS1" | version u32 | header_bytes u32 | size u64 | chunk_bytes u32 |
//           chunks u32 | crc32c of each chunk (u32 × chunks) | crc32c of the header so far
//   data    the object's bytes
// all little-endian. Every chunk (64 KiB) has its own checksum, so a read verifies only
// what it touches; a flipped bit anywhere in the data or the header is kDataLoss naming the
// object and the chunk.
//
// Durability: Put writes <key>.obj.tmp, fsyncs it, renames it over the object and fsyncs
// the directory: after a crash an object is either the old or the new one, never torn.
// Leftover .tmp files are ignored and removed on Open.
//
// Names: datasets [a-z0-9][a-z0-9._-]{0,62}; keys [A-Za-z0-9][A-Za-z0-9._-]{0,199}
// (no '/', no "..": a key never escapes its dataset's directory).
//
// Counters: bytes and reads per dataset, kept in memory (the agent reports them).
//
// Ownership: owns nothing but its counters; files are the state. Thread-safety: every
// method may be called from any thread. Reads use pread and run in parallel; writes to one
// object are serialized by the rename (last writer wins).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mutex.h"
#include "core/status.h"

namespace tern::storage {

inline constexpr uint32_t kChunkBytes = 64 * 1024;
inline constexpr uint64_t kMaxObjectBytes = uint64_t{64} << 30;  // 64 GiB

struct ObjectInfo {
  std::string key;
  uint64_t size = 0;
  bool operator==(const ObjectInfo&) const = default;
};

struct DatasetInfo {
  std::string name;
  uint64_t objects = 0;
  uint64_t bytes = 0;
};

struct DatasetCounters {
  uint64_t reads = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
};

Status ValidateDatasetName(std::string_view name);
Status ValidateObjectKey(std::string_view key);

class DatasetStore {
 public:
  // Opens (creating) the store under `root`; removes leftover temporary files.
  static Result<std::unique_ptr<DatasetStore>> Open(const std::string& root);
  DatasetStore(const DatasetStore&) = delete;
  DatasetStore& operator=(const DatasetStore&) = delete;

  // Stores `data` as dataset/key (replacing it), durably (see the top).
  Status Put(std::string_view dataset, std::string_view key, std::string_view data);
  // Up to `len` bytes from `offset` (fewer at the end of the object; empty at or past it).
  // kNotFound for an unknown dataset or key, kOutOfRange for offset > size, kDataLoss for a
  // checksum mismatch.
  Result<std::string> Read(std::string_view dataset, std::string_view key, uint64_t offset,
                           uint64_t len);
  Result<uint64_t> Size(std::string_view dataset, std::string_view key);
  // The objects of a dataset, sorted by key; kNotFound if there is no such dataset.
  Result<std::vector<ObjectInfo>> List(std::string_view dataset);
  // Whether the dataset exists here (a directory check: cheap enough per read).
  bool HasDataset(std::string_view dataset) const;
  // Every dataset, sorted by name.
  Result<std::vector<DatasetInfo>> Datasets();
  // Removes an object; kNotFound if absent. Removing its last object keeps the dataset.
  Status Remove(std::string_view dataset, std::string_view key);
  // Removes a dataset and all its objects; kNotFound if absent.
  Status RemoveDataset(std::string_view dataset);

  DatasetCounters counters(std::string_view dataset) const EXCLUDES(mu_);
  const std::string& root() const { return root_; }

 private:
  explicit DatasetStore(std::string root) : root_(std::move(root)) {}
  std::string ObjectPath(std::string_view dataset, std::string_view key) const;
  void Count(std::string_view dataset, uint64_t read, uint64_t written) EXCLUDES(mu_);

  const std::string root_;
  mutable Mutex mu_;
  std::map<std::string, DatasetCounters, std::less<>> counters_ GUARDED_BY(mu_);
};

}  // namespace tern::storage
