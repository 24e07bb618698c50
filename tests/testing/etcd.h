// EtcdProcess: a real single-member etcd (Debian's /usr/bin/etcd) on 127.0.0.1 for
// tests, with free client and peer ports and its own data directory. It is stopped
// (SIGTERM, then SIGKILL) when the object is destroyed, and can be killed and
// restarted on the same ports and data for failover tests.
//
// It runs with --heartbeat-interval 50 --election-timeout 500, which makes etcd's
// minimum lease TTL 1 s (the default settings give 2 s) and its start-up quick.
// Test-only; not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "testing/process.h"

namespace tern::testing {

inline constexpr const char* kEtcdBinary = "/usr/bin/etcd";

class EtcdProcess {
 public:
  // True if the etcd binary is installed (tests skip otherwise).
  static bool Available();
  // Starts etcd with its data in `dir`/etcd.data and its log in `dir`/etcd.log, and
  // waits (at most 15 s) until /health answers. kNotFound if the binary is missing.
  static Result<std::unique_ptr<EtcdProcess>> Start(const std::string& dir);
  ~EtcdProcess();
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // "127.0.0.1:<client port>".
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  uint16_t client_port() const { return client_port_; }
  bool running() const { return child_ != nullptr; }

  // SIGKILL, as a crash would (no clean shutdown).
  Status Kill();
  // SIGTERM, then SIGKILL after 5 s.
  Status Stop();
  // Starts it again on the same ports and data directory (after Kill or Stop).
  Status Restart();

 private:
  EtcdProcess(std::string dir, uint16_t client_port, uint16_t peer_port)
      : dir_(std::move(dir)), client_port_(client_port), peer_port_(peer_port) {}
  Status Launch();
  Status WaitHealthy(std::chrono::milliseconds timeout);

  const std::string dir_;
  const uint16_t client_port_;
  const uint16_t peer_port_;
  std::unique_ptr<ChildProcess> child_;
};

}  // namespace tern::testing
