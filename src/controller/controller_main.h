// `tern controller`: parses flags, opens the cluster store, runs the Controller until
// SIGINT/SIGTERM. Thread-safety: call once, from main().
#pragma once

namespace tern::controller {

// Returns the process exit code.
int RunControllerCommand(int argc, char** argv);

}  // namespace tern::controller
