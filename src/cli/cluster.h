// Where the CLI finds a cluster, and the record `tern up` leaves for it.
//
// `tern up` writes <home>/clusters/<name>/cluster.json (ClusterRecord) and makes <name>
// the current cluster (<home>/current); <home> is $TERN_HOME, else $HOME/.tern. Commands
// that can talk to a cluster (deploy, ps, invoke, undeploy, logs) use, in this order:
// --agent / $TERN_AGENT (talk to one agent instead), --controller / $TERN_CONTROLLER
// (with --gateway / $TERN_GATEWAY for invoke), or the current cluster.
// Value types and stateless functions; single-threaded use (the CLI).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "core/status.h"

namespace tern::cli {

class Flags;

struct ClusterRecord {
  std::string name;
  std::string topology;    // the file it was started from
  std::string dir;         // <home>/clusters/<name>: logs, sockets, store, ledger
  std::string controller;  // "ip:port"
  std::string gateway;     // "ip:port"
  std::string isolation;   // "netns" or "loopback"
  struct Agent {
    std::string host;
    std::string address;  // the agent's admin "ip:port"
    std::string log;
    int pid = 0;  // its process (for `tern ps`, tests and the curious)
  };
  std::map</*device*/ std::string, Agent> agents;
};

// $TERN_HOME, else $HOME/.tern, else /tmp/tern-<uid>.
std::string TernHome();
std::string ClusterDir(const std::string& name);
std::string ClusterRecordToJson(const ClusterRecord& r);
Result<ClusterRecord> ClusterRecordFromJson(const std::string& json, const std::string& origin);
// Writes the record and makes it current.
Status SaveClusterRecord(const ClusterRecord& r);
// The record of cluster `name` ("" = the current one); kNotFound if there is none.
Result<ClusterRecord> LoadClusterRecord(const std::string& name);
// Forgets the cluster (its record, and `current` if it points to it).
void ForgetClusterRecord(const std::string& name);

// Adds --controller and --gateway to a command's flags.
void AddClusterFlags(Flags* f);
// The cluster a command should talk to, or nullopt for agent mode (see the top).
Result<std::optional<ClusterRecord>> ResolveCluster(const Flags& f);

}  // namespace tern::cli
