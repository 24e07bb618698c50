// Registrar: how an agent joins a cluster. It registers with the controller (POST
// /v1/agents: device, host, kind, capacity, addresses, and a boot id that is new for
// every process), then heartbeats every interval the controller asks for, carrying its
// telemetry (process CPU time, RSS, the status of every instance). A 404 answer means
// the controller forgot the agent (its lease expired): it registers again. While no
// controller answers it keeps trying, one line in the log per outage; several
// controllers may be given and are tried in turn. It is also the agent's
// KeeperDropReporter: a durable instance's keeper dropping out is POSTed to
// /v1/agents/{device}/journal-out (a thread of its own) before the agent acknowledges a
// reply without that keeper.
//
// Ownership: borrows the Agent (must outlive it); owns its threads. Thread-safety:
// Start and the destructor from one thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace tern::agent {

class Agent;

struct RegistrarOptions {
  std::vector<std::string> controllers;  // "host:port" of each controller
  std::string kind = "cpu";
  double cores = 1;
  double speed = 1;
  uint64_t memory_bytes = 1ull << 30;
  std::string admin;  // where the controller reaches this agent's admin API
  std::string tcp;    // and its frame server
  std::string shm;    // its shared-memory listener ("" = none)
};

class Registrar {
 public:
  static Result<std::unique_ptr<Registrar>> Start(Agent* agent, const RegistrarOptions& options);
  ~Registrar();
  Registrar(const Registrar&) = delete;
  Registrar& operator=(const Registrar&) = delete;

  // The boot id this process registers with.
  const std::string& boot() const;

 private:
  struct Impl;
  explicit Registrar(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::agent
