// JSON renderings of the agent's status types, shared by the admin API and the CLI.
// Pure functions; thread-safe.
#pragma once

#include <string>

#include "agent/agent.h"

namespace tern::agent {

std::string StatusToJson(const AgentStatus& st);
std::string ServiceToJson(const ServiceStatus& s);
std::string MigrationReportToJson(const MigrationReport& r);
// The agent's warm memory reserve (all zero when it has none: `r` null).
std::string MemoryReserveToJson(const MemoryReserve* r);

}  // namespace tern::agent
