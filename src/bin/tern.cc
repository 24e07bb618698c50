// The `tern` binary: one executable, several roles: `tern agent` runs a device agent,
// `tern controller` the cluster controller, `tern gateway` the HTTP ingress; every other
// command is a thin client of their APIs.
#include <cstring>

#include "agent/agent_main.h"
#include "cli/commands.h"
#include "controller/controller_main.h"
#include "gateway/gateway_main.h"

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "agent") == 0) {
    return tern::agent::RunAgentCommand(argc, argv);
  }
  if (argc >= 2 && std::strcmp(argv[1], "controller") == 0) {
    return tern::controller::RunControllerCommand(argc, argv);
  }
  if (argc >= 2 && std::strcmp(argv[1], "gateway") == 0) {
    return tern::gateway::RunGatewayCommand(argc, argv);
  }
  return tern::cli::RunClientCommand(argc, argv);
}
