// Shared pieces of the benchmark drivers (bench/foundation/, bench/rpc/): sample
// statistics, thread and process pinning, CPU-time reads, number formatting, progress
// lines, machine facts, and the result document the foundation sections append to.
//
// A Report is the JSON document a foundation driver run writes (bench/results/*.json):
// one row per measurement (a distribution of samples, or a rate) and the summary lines
// that compare tern with its floor or peer against the goals of issue #2.
// bench/foundation/report.cc turns merged Reports into foundation.json and foundation.md;
// bench/rpc writes its own document (rpc_report.cc) with the same helpers.
//
// Ownership: value types. Thread-safety: a Report is filled by one thread; Stats and
// the helpers are pure or act on the calling thread only; SetProgressName is called
// once by main() before other threads exist.
#pragma once

#include <charconv>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace tern::bench {

// Order statistics of a set of samples (any unit; the benchmarks use nanoseconds).
struct Stats {
  size_t count = 0;
  double min = 0, p50 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;
};
// Sorts `samples` in place. p99.9 is computed always; the report prints it only where
// there are at least kMinSamplesForP999 samples.
Stats Summarize(std::vector<int64_t>& samples);
inline constexpr size_t kMinSamplesForP999 = 10000;

// Monotonic nanoseconds (clock_gettime(CLOCK_MONOTONIC), a vDSO read).
int64_t NowNs();

// The median cost of one NowNs() call, measured now (the timer's own overhead, which
// every per-call sample includes once).
double TimerOverheadNs();

// Number of CPUs this process may run on (sched_getaffinity).
int UsableCpus();
// Pins the calling thread to `cpu`; false if the kernel refused.
bool PinThisThread(int cpu);
// Lets the calling thread run on every CPU again.
void UnpinThisThread();
// Pins every thread of process `pid` (as listed in /proc/<pid>/task) to `cpu`, or, with
// cpu < 0, lets them run anywhere. Threads created later inherit the mask of their
// creator. Returns the number of threads changed.
int PinProcess(int pid, int cpu);

// "1.23 µs", "456 ns", "12.3 ms", "1.20 s": a duration in ns, 3 significant digits.
std::string FormatNs(double ns);
// "1.23", "45.6", "789": 3 significant digits.
std::string Fmt3(double v);
// "123k", "1.23M": a count or rate.
std::string FormatCount(double v);

// Progress line on stderr: "[<name> 12.3s] <text>" (seconds since the process started).
void Progress(const std::string& text);
// The <name> of progress lines ("bench" until set); `name` must outlive the process
// (a string literal).
void SetProgressName(const char* name);

// CPU time (user + system) consumed so far, in seconds, by this process (all its
// threads) or by process `pid` (clock_getcpuclockid: ns resolution, any process of the
// same user); a negative value when `pid` cannot be read (it has exited).
double ProcessCpuSeconds();
double ProcessCpuSeconds(int pid);

// The document a driver run produces.
class Report {
 public:
  Report();

  // A distribution of per-operation times (ns). `extra` is a free-text column
  // ("3.4 GB/s", "612k req/s"); `fields` holds machine-readable extras for the JSON.
  void AddSamples(const std::string& section, const std::string& name, const std::string& pinning,
                  std::vector<int64_t> samples_ns, const std::string& extra = "",
                  nlohmann::json fields = nlohmann::json::object());
  // A row without a distribution (a rate, a size).
  void AddValue(const std::string& section, const std::string& name, const std::string& pinning,
                const std::string& extra, nlohmann::json fields = nlohmann::json::object());

  // One line of the summary table. `floor` is what tern is compared with (a raw engine
  // call, memcpy, native code, raw TCP); ratio = tern / floor (for rates: floor / tern,
  // so that > 1 always means "tern is slower"). `met` is empty when there is no goal.
  struct SummaryLine {
    std::string metric;
    std::string tern;
    std::string floor;
    std::optional<double> ratio;
    std::string goal;
    std::optional<bool> met;
  };
  void AddSummary(const SummaryLine& line);

  // Section titles and notes (printed above the section's table).
  void SetSectionInfo(const std::string& section, const std::string& title,
                      const std::string& notes);
  void AddNote(const std::string& section, const std::string& note);

  nlohmann::json& json() { return doc_; }
  // Writes the document; false (with a message on stderr) on failure.
  bool WriteTo(const std::string& path) const;

 private:
  nlohmann::json& Section(const std::string& section);
  nlohmann::json doc_;
};

// Command-line helpers shared by the benches' flag parsers.
// The value of `arg` when it is "FLAG=VALUE" for this flag, else nullopt.
std::optional<std::string> FlagValue(const std::string& arg, const char* flag);
// A whole decimal number (nothing before or after it), into *out.
template <typename T>
bool ParseNum(const std::string& s, T* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

// Facts about this machine and run (CPU model, vCPUs, kernel, clocksource, git rev).
nlohmann::json MachineInfo(const std::string& source_dir);

// `git rev-parse --short HEAD` of `source_dir`, with " (with uncommitted changes)" when
// tracked files differ; "unknown" without git or a checkout.
std::string GitRev(const std::string& source_dir);

}  // namespace tern::bench
