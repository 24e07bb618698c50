#include "cli/main_util.h"

#include <signal.h>

#include <unistd.h>

#include <algorithm>
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

void PrintReply(std::string_view bytes) {
  std::fwrite(bytes.data(), 1, bytes.size(), stdout);
  if (isatty(STDOUT_FILENO) && (bytes.empty() || bytes.back() != '\n')) std::fputc('\n', stdout);
}

void PrintLatencySummary(std::vector<int64_t> ns, double seconds, std::string_view where) {
  if (ns.empty()) return;
  std::sort(ns.begin(), ns.end());
  auto pct = [&](double p) {
    return static_cast<double>(ns[std::min(ns.size() - 1, static_cast<size_t>(p * ns.size()))]) /
           1e3;
  };
  std::printf("%zu calls%.*s in %.3f s (%.0f calls/s, one at a time)\n", ns.size(),
              static_cast<int>(where.size()), where.data(), seconds,
              static_cast<double>(ns.size()) / seconds);
  std::printf("latency us: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", pct(0.5), pct(0.9),
              pct(0.99), static_cast<double>(ns.back()) / 1e3);
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
