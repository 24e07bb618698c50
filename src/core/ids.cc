#include "core/ids.h"

#include <cstdlib>
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

Status ParseHostPort(const std::string& s, std::string* host, uint16_t* port) {
  size_t c = s.rfind(':');
  if (c == std::string::npos || c == 0 || c + 1 >= s.size()) {
    return InvalidArgumentError("'" + s + "' is not HOST:PORT (e.g. 127.0.0.1:7401)");
  }
  std::string p = s.substr(c + 1);
  char* end = nullptr;
  long v = std::strtol(p.c_str(), &end, 10);
  if (p[0] < '0' || p[0] > '9' || *end != '\0' || v < 1 || v > 65535) {
    return InvalidArgumentError("'" + s + "': port must be 1-65535");
  }
  *host = s.substr(0, c);
  *port = static_cast<uint16_t>(v);
  return Status::Ok();
}

}  // namespace tern
