// The CLI's cluster commands: `tern up`/`down` (cluster_up.cc), `topology check`, `logs`,
// and the cluster side of deploy/ps/invoke/undeploy, which talk to the controller
// (placement, state) and the gateway (invocations) instead of one agent.
// Each returns the process exit code: 0 ok, 1 the operation failed, 2 usage.
// Single-threaded (the CLI).
#pragma once

#include <cstdint>
#include <string>

#include "cli/cluster.h"
#include "transport/json_api.h"

namespace tern::cli {

int CmdUp(int argc, char** argv);
int CmdDown(int argc, char** argv);
int CmdTopology(int argc, char** argv);
int CmdLogs(int argc, char** argv);
int CmdData(int argc, char** argv);  // data_commands.cc
int CmdLoad(int argc, char** argv);  // load_command.cc
int CmdMigrate(int argc, char** argv);  // migrate_commands.cc
int CmdDrain(int argc, char** argv);
int CmdUndrain(int argc, char** argv);

// `replicas` < 0: the manifest's; `devices`: comma-separated allowed devices ("" = any).
// `placement_json`: the controller's placement hints ("" = the spread policy).
int ClusterDeploy(const ClusterRecord& c, const std::string& manifest_yaml,
                  const std::string& module, int replicas, const std::string& devices,
                  const std::string& placement_json, int64_t timeout_ms);
int CmdExplain(int argc, char** argv);
int ClusterPs(const ClusterRecord& c, bool raw_json, int64_t timeout_ms);
// `ids`: sent as X-Tern-Trace-Id (and Idempotency-Key when not 0); the trace id the
// gateway answers with is printed to stderr when that is a terminal.
int ClusterInvoke(const ClusterRecord& c, const std::string& service, const std::string& handler,
                  const std::string& payload, int64_t repeat, int64_t timeout_ms,
                  const transport::CallIds& ids);
int ClusterUndeploy(const ClusterRecord& c, const std::string& service, int64_t timeout_ms);

}  // namespace tern::cli
