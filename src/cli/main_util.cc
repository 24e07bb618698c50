#include "cli/main_util.h"

#include <signal.h>

#include <cstdio>
#include <cstring>

#include "cli/flags.h"

namespace tern::cli {

int UsageError(const Flags& f, std::string_view prog, std::string_view message) {
  std::fprintf(stderr, "%.*s: %.*s\n\n%s", static_cast<int>(prog.size()), prog.data(),
               static_cast<int>(message.size()), message.data(), f.Help().c_str());
  return 2;
}

int CommandFailed(const Status& s) {
  std::fprintf(stderr, "tern: %s\n", s.ToString().c_str());
  return 1;
}

int ParseFlagsOrExit(Flags* f, int argc, char** argv, std::string_view prog, size_t min_pos,
                     size_t max_pos) {
  Status s = f->Parse(argc, argv, 2);
  if (!s.ok()) return UsageError(*f, prog, s.message());
  if (f->help_requested()) {
    std::fputs(f->Help().c_str(), stdout);
    return 0;
  }
  size_t n = f->positional().size();
  if (n < min_pos) return UsageError(*f, prog, "missing arguments");
  if (n > max_pos) return UsageError(*f, prog, "too many arguments");
  return -1;
}

namespace {

sigset_t StopSet() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

void BlockStopSignals() {
  sigset_t set = StopSet();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

std::string WaitForStopSignal() {
  sigset_t set = StopSet();
  int sig = 0;
  sigwait(&set, &sig);
  return strsignal(sig);
}

}  // namespace tern::cli
