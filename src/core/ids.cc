#include "core/ids.h"

#include <random>

namespace tern {

RequestIdGenerator::RequestIdGenerator() {
  std::random_device rd;
  salt_ = (static_cast<uint64_t>(rd()) & 0xFFFFFFull) << 40;
}

std::string MakeInstanceId(const std::string& service, uint64_t n) {
  return service + "-" + std::to_string(n);
}

bool IsValidName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (i == 0 && !alnum) return false;
    if (!alnum && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace tern
