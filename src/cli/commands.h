// The `tern` command-line client: parses a subcommand, calls the agent API through
// client::AgentClient, prints the result. Each command is a thin client.
// Thread-safety: single-threaded, used from main().
#pragma once

namespace tern::cli {

// Runs `tern <command> ...` for every client command (deploy, invoke, ps, ...).
// Returns the process exit code: 0 success, 1 the operation failed, 2 usage error.
int RunClientCommand(int argc, char** argv);
// Prints the top-level help (the list of commands).
void PrintTopLevelHelp();

}  // namespace tern::cli
