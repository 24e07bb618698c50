#include "storage/dataset_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/bytes.h"
#include "core/crc32c.h"
#include "core/file.h"

namespace tern::storage {

namespace {

constexpr char kMagic[4] = {'T', 'D', 'S', '1'};
constexpr uint32_t kVersion = 1;
// magic, version, header_bytes, size (u64), chunk_bytes, chunks
constexpr size_t kFixedHeader = 4 + 4 + 4 + 8 + 4 + 4;
constexpr std::string_view kSuffix = ".obj";
constexpr std::string_view kTmpSuffix = ".obj.tmp";

bool NameChar(char c, bool upper) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (upper && c >= 'A' && c <= 'Z') ||
         c == '.' || c == '_' || c == '-';
}

Status ValidateName(std::string_view what, std::string_view name, size_t max, bool upper) {
  bool ok = !name.empty() && name.size() <= max && name[0] != '.' && name[0] != '_' &&
            name[0] != '-' && name.find("..") == std::string_view::npos;
  for (char c : name) ok = ok && NameChar(c, upper);
  if (ok) return Status::Ok();
  return InvalidArgumentError(fmt::format(
      "{} '{}' is not valid: 1-{} characters of {}, '.', '_', '-', starting with a letter or "
      "digit, no '..'",
      what, name, max, upper ? "letters, digits" : "lower-case letters, digits"));
}


Status Errno(std::string_view what, const std::string& path) {
  int e = errno;
  StatusCode code = e == ENOENT ? StatusCode::kNotFound
                    : e == ENOSPC || e == EDQUOT ? StatusCode::kResourceExhausted
                                                 : StatusCode::kInternal;
  return Status(code, fmt::format("{} {}: {}", what, path, std::strerror(e)));
}

Status WriteAll(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("writing", path);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Status ReadAt(int fd, char* p, size_t n, uint64_t off, const std::string& path) {
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Errno("reading", path);
    }
    if (r == 0) return DataLossError(fmt::format("{} is truncated", path));
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("opening", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? Status::Ok() : Errno("syncing", dir);
}

// Directory entries (names only), sorted; kNotFound if the directory does not exist.
Result<std::vector<std::string>> Entries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Errno("listing", dir);
  std::vector<std::string> out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// An open object: its fd and parsed header.
struct Object {
  int fd = -1;
  std::string path;
  uint64_t size = 0;
  uint32_t chunk_bytes = 0;
  uint32_t header_bytes = 0;
  std::vector<uint32_t> crcs;
  ~Object() {
    if (fd >= 0) ::close(fd);
  }
};

Status OpenObject(const std::string& path, std::string_view name, Object* o) {
  o->path = path;
  o->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (o->fd < 0) {
    if (errno == ENOENT) return NotFoundError(fmt::format("no object {}", name));
    return Errno("opening", path);
  }
  char fixed[kFixedHeader];
  Status s = ReadAt(o->fd, fixed, sizeof(fixed), 0, path);
  if (!s.ok()) return DataLossError(fmt::format("object {}: header unreadable: {}", name, s.message()));
  if (std::memcmp(fixed, kMagic, 4) != 0 || LoadU32(fixed + 4) != kVersion) {
    return DataLossError(fmt::format("object {}: not a tern dataset object (bad magic/version)", name));
  }
  o->header_bytes = LoadU32(fixed + 8);
  o->size = LoadU64(fixed + 12);
  o->chunk_bytes = LoadU32(fixed + 20);
  uint32_t chunks = LoadU32(fixed + 24);
  uint64_t want_chunks = o->chunk_bytes ? (o->size + o->chunk_bytes - 1) / o->chunk_bytes : 0;
  if (o->chunk_bytes == 0 || o->size > kMaxObjectBytes || chunks != want_chunks ||
      o->header_bytes != kFixedHeader + 4 * uint64_t{chunks} + 4) {
    return DataLossError(fmt::format("object {}: inconsistent header", name));
  }
  std::string header(o->header_bytes, '\0');
  TERN_RETURN_IF_ERROR(ReadAt(o->fd, header.data(), header.size(), 0, path));
  if (Crc32c(header.data(), header.size() - 4) != LoadU32(header.data() + header.size() - 4)) {
    return DataLossError(fmt::format("object {}: header checksum mismatch", name));
  }
  o->crcs.resize(chunks);
  for (uint32_t i = 0; i < chunks; ++i) o->crcs[i] = LoadU32(header.data() + kFixedHeader + 4 * i);
  struct stat st {};
  if (::fstat(o->fd, &st) != 0) return Errno("stat", path);
  if (static_cast<uint64_t>(st.st_size) != o->header_bytes + o->size) {
    return DataLossError(fmt::format("object {}: {} bytes on disk, the header says {}", name,
                                     st.st_size, o->header_bytes + o->size));
  }
  return Status::Ok();
}

}  // namespace

Status ValidateDatasetName(std::string_view name) {
  return ValidateName("dataset name", name, 63, /*upper=*/false);
}

Status ValidateObjectKey(std::string_view key) {
  TERN_RETURN_IF_ERROR(ValidateName("object key", key, 200, /*upper=*/true));
  if (EndsWith(key, kSuffix) || EndsWith(key, kTmpSuffix)) {
    return InvalidArgumentError(fmt::format("object key '{}' may not end in .obj", key));
  }
  return Status::Ok();
}

Result<std::unique_ptr<DatasetStore>> DatasetStore::Open(const std::string& root) {
  if (root.empty()) return InvalidArgumentError("the dataset store needs a directory");
  TERN_RETURN_IF_ERROR(MakeDirs(root));
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> datasets, Entries(root));
  for (const std::string& d : datasets) {
    Result<std::vector<std::string>> files = Entries(root + "/" + d);
    if (!files.ok()) continue;  // not a directory
    for (const std::string& f : *files) {
      if (EndsWith(f, kTmpSuffix)) ::unlink((root + "/" + d + "/" + f).c_str());
    }
  }
  return std::unique_ptr<DatasetStore>(new DatasetStore(root));
}

std::string DatasetStore::ObjectPath(std::string_view dataset, std::string_view key) const {
  return fmt::format("{}/{}/{}{}", root_, dataset, key, kSuffix);
}

void DatasetStore::Count(std::string_view dataset, uint64_t read, uint64_t written) {
  MutexLock l(&mu_);
  auto it = counters_.find(dataset);
  if (it == counters_.end()) it = counters_.emplace(std::string(dataset), DatasetCounters{}).first;
  if (read > 0 || written == 0) ++it->second.reads;
  it->second.bytes_read += read;
  it->second.bytes_written += written;
}

DatasetCounters DatasetStore::counters(std::string_view dataset) const {
  MutexLock l(&mu_);
  auto it = counters_.find(dataset);
  return it == counters_.end() ? DatasetCounters{} : it->second;
}

Status DatasetStore::Put(std::string_view dataset, std::string_view key, std::string_view data) {
  TERN_RETURN_IF_ERROR(ValidateDatasetName(dataset));
  TERN_RETURN_IF_ERROR(ValidateObjectKey(key));
  if (data.size() > kMaxObjectBytes) {
    return InvalidArgumentError(fmt::format("object {}/{} is {} bytes; at most {}", dataset, key,
                                            data.size(), kMaxObjectBytes));
  }
  std::string dir = fmt::format("{}/{}", root_, dataset);
  TERN_RETURN_IF_ERROR(MakeDirs(dir));
  uint32_t chunks = static_cast<uint32_t>((data.size() + kChunkBytes - 1) / kChunkBytes);
  std::string header;
  header.append(kMagic, 4);
  AppendU32(&header, kVersion);
  AppendU32(&header, static_cast<uint32_t>(kFixedHeader + 4 * uint64_t{chunks} + 4));
  AppendU64(&header, data.size());
  AppendU32(&header, kChunkBytes);
  AppendU32(&header, chunks);
  for (uint32_t i = 0; i < chunks; ++i) {
    size_t off = size_t{i} * kChunkBytes;
    AppendU32(&header, Crc32c(data.data() + off, std::min<size_t>(kChunkBytes, data.size() - off)));
  }
  AppendU32(&header, Crc32c(header.data(), header.size()));
  std::string path = ObjectPath(dataset, key);
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("creating", tmp);
  Status s = WriteAll(fd, header.data(), header.size(), tmp);
  if (s.ok()) s = WriteAll(fd, data.data(), data.size(), tmp);
  if (s.ok() && ::fdatasync(fd) != 0) s = Errno("syncing", tmp);
  ::close(fd);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = Errno("renaming", tmp);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  TERN_RETURN_IF_ERROR(SyncDir(dir));
  Count(dataset, 0, data.size());
  return Status::Ok();
}

Result<std::string> DatasetStore::Read(std::string_view dataset, std::string_view key,
                                       uint64_t offset, uint64_t len) {
  TERN_RETURN_IF_ERROR(ValidateDatasetName(dataset));
  TERN_RETURN_IF_ERROR(ValidateObjectKey(key));
  std::string name = fmt::format("{}/{}", dataset, key);
  Object o;
  Status s = OpenObject(ObjectPath(dataset, key), name, &o);
  if (s.code() == StatusCode::kNotFound && !FileExists(fmt::format("{}/{}", root_, dataset))) {
    return NotFoundError(fmt::format("no dataset '{}' on this device", dataset));
  }
  TERN_RETURN_IF_ERROR(s);
  if (offset > o.size) {
    return OutOfRangeError(
        fmt::format("read of {} at offset {}: the object has {} bytes", name, offset, o.size));
  }
  uint64_t n = std::min(len, o.size - offset);
  std::string out;
  if (n == 0) return out;
  uint64_t first = offset / o.chunk_bytes, last = (offset + n - 1) / o.chunk_bytes;
  uint64_t span_off = first * o.chunk_bytes;
  uint64_t span_end = std::min<uint64_t>((last + 1) * o.chunk_bytes, o.size);
  std::string span(span_end - span_off, '\0');
  TERN_RETURN_IF_ERROR(ReadAt(o.fd, span.data(), span.size(), o.header_bytes + span_off, o.path));
  for (uint64_t c = first; c <= last; ++c) {
    uint64_t at = (c - first) * o.chunk_bytes;
    uint64_t clen = std::min<uint64_t>(o.chunk_bytes, span.size() - at);
    if (Crc32c(span.data() + at, clen) != o.crcs[c]) {
      return DataLossError(fmt::format("object {}: chunk {} (bytes {}..{}) fails its checksum", name,
                                       c, c * o.chunk_bytes, c * o.chunk_bytes + clen));
    }
  }
  if (offset == span_off && n == span.size()) {
    out = std::move(span);
  } else {
    out.assign(span, offset - span_off, n);
  }
  Count(dataset, n, 0);
  return out;
}

Result<uint64_t> DatasetStore::Size(std::string_view dataset, std::string_view key) {
  TERN_RETURN_IF_ERROR(ValidateDatasetName(dataset));
  TERN_RETURN_IF_ERROR(ValidateObjectKey(key));
  Object o;
  TERN_RETURN_IF_ERROR(OpenObject(ObjectPath(dataset, key), fmt::format("{}/{}", dataset, key), &o));
  return o.size;
}

Result<std::vector<ObjectInfo>> DatasetStore::List(std::string_view dataset) {
  TERN_RETURN_IF_ERROR(ValidateDatasetName(dataset));
  Result<std::vector<std::string>> files = Entries(fmt::format("{}/{}", root_, dataset));
  if (!files.ok()) {
    if (files.status().code() == StatusCode::kNotFound) {
      return NotFoundError(fmt::format("no dataset '{}' on this device", dataset));
    }
    return files.status();
  }
  std::vector<ObjectInfo> out;
  for (const std::string& f : *files) {
    if (!EndsWith(f, kSuffix)) continue;
    std::string key = f.substr(0, f.size() - kSuffix.size());
    struct stat st {};
    if (::stat(ObjectPath(dataset, key).c_str(), &st) != 0) continue;  // removed meanwhile
    Result<uint64_t> size = Size(dataset, key);
    out.push_back(ObjectInfo{key, size.ok() ? *size : 0});
  }
  return out;
}

bool DatasetStore::HasDataset(std::string_view dataset) const {
  if (!ValidateDatasetName(dataset).ok()) return false;
  struct stat st {};
  return ::stat(fmt::format("{}/{}", root_, dataset).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Result<std::vector<DatasetInfo>> DatasetStore::Datasets() {
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> names, Entries(root_));
  std::vector<DatasetInfo> out;
  for (const std::string& n : names) {
    if (!ValidateDatasetName(n).ok()) continue;
    Result<std::vector<ObjectInfo>> objs = List(n);
    if (!objs.ok()) continue;
    DatasetInfo d{n, objs->size(), 0};
    for (const ObjectInfo& o : *objs) d.bytes += o.size;
    out.push_back(std::move(d));
  }
  return out;
}

Status DatasetStore::Remove(std::string_view dataset, std::string_view key) {
  TERN_RETURN_IF_ERROR(ValidateDatasetName(dataset));
  TERN_RETURN_IF_ERROR(ValidateObjectKey(key));
  std::string path = ObjectPath(dataset, key);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return NotFoundError(fmt::format("no object {}/{}", dataset, key));
    return Errno("removing", path);
  }
  return SyncDir(fmt::format("{}/{}", root_, dataset));
}

Status DatasetStore::RemoveDataset(std::string_view dataset) {
  TERN_RETURN_IF_ERROR(ValidateDatasetName(dataset));
  std::string dir = fmt::format("{}/{}", root_, dataset);
  Result<std::vector<std::string>> files = Entries(dir);
  if (!files.ok()) {
    if (files.status().code() == StatusCode::kNotFound) {
      return NotFoundError(fmt::format("no dataset '{}' on this device", dataset));
    }
    return files.status();
  }
  for (const std::string& f : *files) {
    std::string p = dir + "/" + f;
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) return Errno("removing", p);
  }
  if (::rmdir(dir.c_str()) != 0) return Errno("removing", dir);
  {
    MutexLock l(&mu_);
    auto it = counters_.find(dataset);
    if (it != counters_.end()) counters_.erase(it);
  }
  return SyncDir(root_);
}

}  // namespace tern::storage
