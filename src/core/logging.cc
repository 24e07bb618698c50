#include "core/logging.h"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace tern {
namespace {

LogLevel InitialLevel() {
  const char* env = std::getenv("TERN_LOG_LEVEL");
  LogLevel level = LogLevel::kInfo;
  if (env != nullptr) ParseLogLevel(env, &level);
  return level;
}

std::atomic<int>& LevelStore() {
  static std::atomic<int> level{static_cast<int>(InitialLevel())};
  return level;
}

}  // namespace

void SetMinLogLevel(LogLevel level) { LevelStore().store(static_cast<int>(level)); }
LogLevel MinLogLevel() {
  return static_cast<LogLevel>(LevelStore().load(std::memory_order_relaxed));
}

bool ParseLogLevel(std::string_view s, LogLevel* out) {
  if (s == "debug")
    *out = LogLevel::kDebug;
  else if (s == "info")
    *out = LogLevel::kInfo;
  else if (s == "warn" || s == "warning")
    *out = LogLevel::kWarning;
  else if (s == "error")
    *out = LogLevel::kError;
  else
    return false;
  return true;
}

namespace internal {

LogMessage::LogMessage(LogLevel level, const char* file, int line) : level_(level) {
  static constexpr char kLetters[] = "DIWEF";
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tm;
  localtime_r(&tv.tv_sec, &tm);
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  char prefix[96];
  std::snprintf(prefix, sizeof(prefix), "%c%02d%02d %02d:%02d:%02d.%06ld %s:%d] ",
                kLetters[static_cast<int>(level)], tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                tm.tm_sec, static_cast<long>(tv.tv_usec), base, line);
  os_ << prefix;
}

LogMessage::~LogMessage() {
  os_ << '\n';
  std::string s = os_.str();
  ssize_t ignored = ::write(STDERR_FILENO, s.data(), s.size());
  (void)ignored;
  if (level_ == LogLevel::kFatal) std::abort();
}

}  // namespace internal
}  // namespace tern

// Under AddressSanitizer, leave SIGSEGV to V8: its wasm trap handler turns guard-page
// faults into wasm traps (see docs/design/sandbox.md). Lives here because every tern
// binary links logging.cc.
#if defined(__SANITIZE_ADDRESS__)
extern "C" const char* __asan_default_options() {
  return "handle_segv=0:allow_user_segv_handler=1:detect_leaks=0";
}
#endif

// Under ThreadSanitizer: V8 (Debian's libnode) is not instrumented, so TSan cannot see
// its internal synchronization and reports races inside it and on objects it hands
// back. Those reports are about V8, not us; our own code stays fully checked.
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_suppressions() {
  return "called_from_lib:libnode.so.108\n"
         "race:libnode.so.108\n"
         "race:v8::\n"
         "mutex:libnode.so.108\n"
         // The watchdog's call of Isolate::TerminateExecution() (thread-safe by V8's
         // contract) unlocks a V8-internal mutex that TSan never saw locked.
         "mutex:tern::wasm::internal::V8Worker::Init\n"
         "deadlock:libnode.so.108\n";
}
#endif
