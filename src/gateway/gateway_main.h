// `tern gateway`: parses flags, starts a Gateway (with its controller poller or a
// static location file) and serves until SIGINT/SIGTERM. Thread-safety: call once,
// from main().
#pragma once

namespace tern::gateway {

// Returns the process exit code: 0 after a clean stop, 2 for bad flags, 1 if the
// gateway cannot start.
int RunGatewayCommand(int argc, char** argv);

}  // namespace tern::gateway
