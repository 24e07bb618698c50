#include "common/bench_util.h"

#include <dirent.h>
#include <fmt/format.h>
#include <sched.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace tern::bench {

namespace {

double Percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  // Nearest rank: the smallest sample with at least q of all samples at or below it.
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  if (rank == 0) rank = 1;
  return static_cast<double>(sorted[std::min(rank, sorted.size()) - 1]);
}

const int64_t g_start_ns = NowNs();
const char* g_progress_name = "bench";

std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

Stats Summarize(std::vector<int64_t>& samples) {
  Stats s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.count = samples.size();
  s.min = static_cast<double>(samples.front());
  s.max = static_cast<double>(samples.back());
  s.p50 = Percentile(samples, 0.50);
  s.p99 = Percentile(samples, 0.99);
  s.p999 = Percentile(samples, 0.999);
  long double sum = 0;
  for (int64_t v : samples) sum += v;
  s.mean = static_cast<double>(sum / samples.size());
  return s;
}

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

double TimerOverheadNs() {
  std::vector<int64_t> per;
  per.reserve(200);
  for (int r = 0; r < 200; ++r) {
    constexpr int kN = 1000;
    int64_t t0 = NowNs();
    for (int i = 0; i < kN; ++i) (void)NowNs();
    per.push_back((NowNs() - t0) / kN);
  }
  return Summarize(per).p50;
}

int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return CPU_COUNT(&set);
}

bool PinThisThread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof(set), &set) == 0;
}

void UnpinThisThread() {
  cpu_set_t set;
  CPU_ZERO(&set);
  long n = sysconf(_SC_NPROCESSORS_CONF);
  for (long i = 0; i < n && i < CPU_SETSIZE; ++i) CPU_SET(i, &set);
  (void)sched_setaffinity(0, sizeof(set), &set);
}

int PinProcess(int pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) {
    CPU_SET(cpu, &set);
  } else {
    long n = sysconf(_SC_NPROCESSORS_CONF);
    for (long i = 0; i < n && i < CPU_SETSIZE; ++i) CPU_SET(i, &set);
  }
  std::string dir = fmt::format("/proc/{}/task", pid);
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return 0;
  int changed = 0;
  while (dirent* e = readdir(d)) {
    int tid = std::atoi(e->d_name);
    if (tid > 0 && sched_setaffinity(tid, sizeof(set), &set) == 0) ++changed;
  }
  closedir(d);
  return changed;
}

std::string Fmt3(double v) {
  double a = std::fabs(v);
  if (a >= 100 || a == 0) return fmt::format("{:.0f}", v);
  if (a >= 10) return fmt::format("{:.1f}", v);
  if (a >= 1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.3f}", v);
}

std::string FormatNs(double ns) {
  if (ns < 1e3) return Fmt3(ns) + " ns";
  if (ns < 1e6) return Fmt3(ns / 1e3) + " µs";
  if (ns < 1e9) return Fmt3(ns / 1e6) + " ms";
  return Fmt3(ns / 1e9) + " s";
}

std::string FormatCount(double v) {
  if (v < 1e3) return Fmt3(v);
  if (v < 1e6) return Fmt3(v / 1e3) + "k";
  if (v < 1e9) return Fmt3(v / 1e6) + "M";
  return Fmt3(v / 1e9) + "G";
}

void Progress(const std::string& text) {
  double t = static_cast<double>(NowNs() - g_start_ns) / 1e9;
  std::string line = fmt::format("[{} {:6.1f}s] {}\n", g_progress_name, t, text);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

void SetProgressName(const char* name) { g_progress_name = name; }

double ProcessCpuSeconds() {
  timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return -1;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double ProcessCpuSeconds(int pid) {
  clockid_t clock;
  if (clock_getcpuclockid(pid, &clock) != 0) return -1;
  timespec ts;
  if (clock_gettime(clock, &ts) != 0) return -1;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// ------------------------------------------------------------------------- Report

Report::Report() {
  doc_ = nlohmann::json::object();
  doc_["sections"] = nlohmann::json::array();
  doc_["summary"] = nlohmann::json::array();
}

nlohmann::json& Report::Section(const std::string& section) {
  for (auto& s : doc_["sections"]) {
    if (s["id"] == section) return s;
  }
  nlohmann::json s = {{"id", section},
                      {"title", section},
                      {"notes", nlohmann::json::array()},
                      {"rows", nlohmann::json::array()}};
  doc_["sections"].push_back(std::move(s));
  return doc_["sections"].back();
}

void Report::SetSectionInfo(const std::string& section, const std::string& title,
                            const std::string& notes) {
  nlohmann::json& s = Section(section);
  s["title"] = title;
  if (!notes.empty()) s["notes"].push_back(notes);
}

void Report::AddNote(const std::string& section, const std::string& note) {
  Section(section)["notes"].push_back(note);
}

void Report::AddSamples(const std::string& section, const std::string& name,
                        const std::string& pinning, std::vector<int64_t> samples_ns,
                        const std::string& extra, nlohmann::json fields) {
  Stats st = Summarize(samples_ns);
  nlohmann::json row = {{"name", name},      {"pinning", pinning}, {"unit", "ns"},
                        {"count", st.count}, {"min", st.min},      {"p50", st.p50},
                        {"p99", st.p99},     {"max", st.max},      {"mean", st.mean},
                        {"extra", extra}};
  if (st.count >= kMinSamplesForP999) row["p999"] = st.p999;
  for (auto& [k, v] : fields.items()) row[k] = v;
  Section(section)["rows"].push_back(std::move(row));
  std::string line =
      fmt::format("{}: {} — p50 {} p99 {} min {} (n={}){}", section, name, FormatNs(st.p50),
                  FormatNs(st.p99), FormatNs(st.min), st.count, extra.empty() ? "" : "; " + extra);
  if (!pinning.empty()) line += " [" + pinning + "]";
  Progress(line);
}

void Report::AddValue(const std::string& section, const std::string& name,
                      const std::string& pinning, const std::string& extra, nlohmann::json fields) {
  nlohmann::json row = {{"name", name}, {"pinning", pinning}, {"extra", extra}};
  for (auto& [k, v] : fields.items()) row[k] = v;
  Section(section)["rows"].push_back(std::move(row));
  Progress(fmt::format("{}: {} — {}{}", section, name, extra,
                       pinning.empty() ? "" : " [" + pinning + "]"));
}

void Report::AddSummary(const SummaryLine& line) {
  nlohmann::json j = {
      {"metric", line.metric}, {"tern", line.tern}, {"floor", line.floor}, {"goal", line.goal}};
  j["ratio"] = line.ratio ? nlohmann::json(*line.ratio) : nlohmann::json(nullptr);
  j["met"] = line.met ? nlohmann::json(*line.met) : nlohmann::json(nullptr);
  doc_["summary"].push_back(std::move(j));
}

bool Report::WriteTo(const std::string& path) const {
  std::ofstream out(path, std::ios::trunc);
  out << doc_.dump(2) << "\n";
  out.close();
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return false;
  }
  return true;
}

nlohmann::json MachineInfo(const std::string& source_dir) {
  nlohmann::json m = nlohmann::json::object();
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) m["cpu_model"] = line.substr(colon + 2);
      break;
    }
  }
  m["online_cpus"] = sysconf(_SC_NPROCESSORS_ONLN);
  m["usable_cpus"] = UsableCpus();
  utsname u;
  if (uname(&u) == 0) m["kernel"] = std::string(u.release);
  m["clocksource"] =
      ReadFirstLine("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  m["loadavg"] = ReadFirstLine("/proc/loadavg");
  if (!source_dir.empty()) m["git_rev"] = GitRev(source_dir);
  time_t now = time(nullptr);
  char ts[64];
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  m["date_utc"] = ts;
  return m;
}

std::string GitRev(const std::string& source_dir) {
  std::string rev = "unknown";
  if (source_dir.empty()) return rev;
  std::string cmd = "git -C '" + source_dir + "' rev-parse --short HEAD 2>/dev/null";
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[64] = {0};
    if (fgets(buf, sizeof(buf), p) != nullptr) {
      rev = buf;
      while (!rev.empty() && (rev.back() == '\n' || rev.back() == '\r')) rev.pop_back();
    }
    pclose(p);
  }
  cmd = "git -C '" + source_dir + "' status --porcelain --untracked-files=no 2>/dev/null";
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[8];
    if (fgets(buf, sizeof(buf), p) != nullptr) rev += " (with uncommitted changes)";
    pclose(p);
  }
  return rev;
}

std::optional<std::string> FlagValue(const std::string& arg, const char* flag) {
  const std::string f = std::string(flag) + "=";
  if (arg.rfind(f, 0) == 0) return arg.substr(f.size());
  return std::nullopt;
}

}  // namespace tern::bench
