// The `tern` binary: one executable, several roles. `tern agent` runs a device agent;
// every other command is a thin client of an agent's API.
#include <cstring>

#include "agent/agent_main.h"
#include "cli/commands.h"

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "agent") == 0) {
    return tern::agent::RunAgentCommand(argc, argv);
  }
  return tern::cli::RunClientCommand(argc, argv);
}
