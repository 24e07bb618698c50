// Small file helpers over POSIX, returning Status instead of throwing.
// Thread-safety: stateless functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace tern {

// Reads a whole file. Errors name the path.
Result<std::string> ReadFile(const std::string& path);
// Writes `data` to `path` atomically: a temporary file in the same directory, fsync,
// rename, fsync of the directory. A crash leaves either the old or the new file.
Status WriteFileAtomic(const std::string& path, std::string_view data);
// Creates a directory and its parents (like mkdir -p).
Status MakeDirs(const std::string& path);
bool FileExists(const std::string& path);
// Removes a file or a directory tree (like rm -rf; symlinks are removed, not followed).
// A missing path is OK.
Status RemoveTree(const std::string& path);
// The directory part of a path ("a/b/c.yaml" -> "a/b", "c.yaml" -> ".").
std::string DirName(const std::string& path);
// Joins a base directory and a relative path; absolute `rel` is returned as is.
std::string JoinPath(const std::string& base, const std::string& rel);

}  // namespace tern
