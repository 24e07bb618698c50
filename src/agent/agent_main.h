// `tern agent`: parses flags, builds the engine, the Agent and its AgentServer, and
// serves until SIGINT/SIGTERM. Thread-safety: call once, from main().
#pragma once

namespace tern::agent {

// Returns the process exit code.
int RunAgentCommand(int argc, char** argv);

}  // namespace tern::agent
