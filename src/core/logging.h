// Logging and CHECK.
//
//   TERN_LOG(INFO) << "deployed " << name;
//   CHECK(ptr != nullptr) << "why";      // broken invariants only; aborts
//
// Lines go to stderr as "I1123 18:52:01.123456 agent.cc:42] message". The minimum
// level comes from SetMinLogLevel() or the TERN_LOG_LEVEL environment variable
// (debug|info|warn|error). Thread-safety: each line is written with one write(2).
#pragma once

#include <sstream>
#include <string_view>

namespace tern {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "debug", "info", "warn"/"warning", "error"; returns false if unknown.
bool ParseLogLevel(std::string_view s, LogLevel* out);

namespace internal {

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();  // writes the line; aborts for kFatal
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return os_; }

 private:
  LogLevel level_;
  std::ostringstream os_;
};

// Swallows the stream expression when the level is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace tern

#define TERN_LOG_LEVEL_DEBUG ::tern::LogLevel::kDebug
#define TERN_LOG_LEVEL_INFO ::tern::LogLevel::kInfo
#define TERN_LOG_LEVEL_WARN ::tern::LogLevel::kWarning
#define TERN_LOG_LEVEL_ERROR ::tern::LogLevel::kError
#define TERN_LOG_LEVEL_FATAL ::tern::LogLevel::kFatal

#define TERN_LOG(level)                            \
  (TERN_LOG_LEVEL_##level < ::tern::MinLogLevel()) \
      ? (void)0                                    \
      : ::tern::internal::LogVoidify() &           \
            ::tern::internal::LogMessage(TERN_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

#define CHECK(cond)                                                                                \
  (cond) ? (void)0                                                                                 \
         : ::tern::internal::LogVoidify() &                                                        \
               ::tern::internal::LogMessage(::tern::LogLevel::kFatal, __FILE__, __LINE__).stream() \
                   << "CHECK failed: " #cond " "

#ifdef NDEBUG
#define DCHECK(cond) \
  while (false) CHECK(cond)
#else
#define DCHECK(cond) CHECK(cond)
#endif
