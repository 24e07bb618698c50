// `tern load`: an open-loop load generator through the cluster's gateway, for watching
// what a migration (or a failure) does to a live service: requests go out on a fixed
// schedule whatever the answers do, latency counts from the scheduled time (no
// coordinated omission), every request carries an idempotency key and is retried with
// the same key until it is answered, and with --counter the service's own count is
// compared with the number of answers (nothing lost, nothing executed twice).

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "cli/cluster.h"
#include "cli/cluster_commands.h"
#include "cli/flags.h"
#include "cli/main_util.h"
#include "core/clock.h"
#include "core/ids.h"
#include "transport/http.h"
#include "transport/json_api.h"

namespace tern::cli {

namespace {

struct Outcome {
  bool ok = false;
  int attempts = 0;
  int64_t sched_ns = 0;    // relative to the start
  int64_t latency_ns = 0;  // answer − scheduled time
  std::string error;
};

double Pct(std::vector<int64_t>& v, double q) {
  if (v.empty()) return 0;
  size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return static_cast<double>(v[i]);
}

std::string Ms(double ns) { return fmt::format("{:.2f} ms", ns / 1e6); }

}  // namespace

int CmdLoad(int argc, char** argv) {
  Flags f("tern load SERVICE HANDLER [PAYLOAD] [flags]",
          "Open-loop load through the cluster's gateway: RATE requests per second for\n"
          "DURATION, on a fixed schedule whatever the answers do. Latency counts from each\n"
          "request's scheduled time. Every request has its own idempotency key and is\n"
          "retried with that key until answered (or --retry-for-ms passes): a request the\n"
          "service already executed is answered from its dedup table, not run again.\n"
          "Prints progress each second and a summary; with --counter, compares the\n"
          "service's count (its `get` handler) before and after with the answers.\n\n"
          "example: tern load counter touch --rate 500 --duration-ms 6000 --counter");
  f.Add("rate", "200", "requests per second");
  f.Add("duration-ms", "5000", "how long to send");
  f.Add("connections", "8", "concurrent HTTP connections to the gateway");
  f.Add("timeout-ms", "2000", "per attempt");
  f.Add("retry-for-ms", "10000", "give a request up (lost) after retrying this long");
  f.AddBool("counter", "the handler adds 1 to a count that `get` returns: verify it");
  f.AddBool("quiet", "no progress lines");
  AddClusterFlags(&f);
  if (int rc = ParseFlagsOrExit(&f, argc, argv, "tern load", 2, 3); rc >= 0) return rc;
  auto num = [&](const char* name, int64_t lo, int64_t hi) -> Result<int64_t> {
    return f.GetInt(name, lo, hi);
  };
  Result<int64_t> rate = num("rate", 1, 100'000), dur = num("duration-ms", 1, 3'600'000),
                  conns = num("connections", 1, 256), tmo = num("timeout-ms", 1, 600'000),
                  retry = num("retry-for-ms", 0, 3'600'000);
  for (const Result<int64_t>* r : {&rate, &dur, &conns, &tmo, &retry}) {
    if (!r->ok()) return UsageError(f, "tern load", r->status().message());
  }
  Result<std::optional<ClusterRecord>> cluster = ResolveCluster(f);
  if (!cluster.ok()) return CommandFailed(cluster.status());
  if (!cluster->has_value() || (**cluster).gateway.empty()) {
    return CommandFailed(FailedPreconditionError(
        "tern load needs a cluster gateway (`tern up` first, or --gateway HOST:PORT)"));
  }
  const ClusterRecord& c = **cluster;
  const std::string service = f.positional()[0], handler = f.positional()[1];
  const std::string payload = f.positional().size() == 3 ? f.positional()[2] : "";
  std::string host;
  uint16_t port = 0;
  if (Status s = ParseHostPort(c.gateway, &host, &port); !s.ok()) {
    return CommandFailed(s.WithPrefix("gateway"));
  }
  auto connect = [&]() { return transport::HttpClient::Connect(host, port, std::chrono::seconds(5)); };
  auto call = [&](transport::HttpClient* http, const std::string& h, const std::string& body,
                  uint64_t key) -> Result<std::string> {
    transport::HttpHeaders headers = {{"X-Tern-Timeout-Ms", std::to_string(*tmo)}};
    if (key != 0) headers.emplace_back("Idempotency-Key", std::to_string(key));
    TERN_ASSIGN_OR_RETURN(
        transport::HttpClientResponse r,
        http->Request("POST", "/v1/invoke/" + service + "/" + h, body, "application/octet-stream",
                      std::chrono::milliseconds(*tmo + 1000), headers));
    if (r.status != 200) return transport::StatusFromErrorBody(r.status, r.body, "gateway");
    return r.body;
  };
  auto read_count = [&]() -> Result<int64_t> {
    TERN_ASSIGN_OR_RETURN(std::unique_ptr<transport::HttpClient> http, connect());
    TERN_ASSIGN_OR_RETURN(std::string v, call(http.get(), "get", "", 0));
    char* end = nullptr;
    long long n = std::strtoll(v.c_str(), &end, 10);
    if (end == v.c_str()) return InvalidArgumentError(fmt::format("`get` replied '{}', not a number", v));
    return static_cast<int64_t>(n);
  };
  int64_t before = 0;
  if (f.GetBool("counter")) {
    Result<int64_t> b = read_count();
    if (!b.ok()) return CommandFailed(b.status().WithPrefix("reading the count before"));
    before = *b;
  }

  const int64_t total = *rate * *dur / 1000;
  const double interval_ns = 1e9 / static_cast<double>(*rate);
  std::vector<Outcome> out(static_cast<size_t>(total));
  std::atomic<int64_t> next{0}, done{0}, answered{0}, retried{0};
  std::random_device rd;
  const uint64_t key_base = (uint64_t{rd()} << 32 | rd()) & ~uint64_t{0xFFFFFFFF};
  const int64_t start = MonoNanos() + 50'000'000;
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < *conns; ++t) {
    threads.emplace_back([&] {
      std::unique_ptr<transport::HttpClient> http;
      for (;;) {
        const int64_t i = next.fetch_add(1);
        if (i >= total) return;
        Outcome& o = out[static_cast<size_t>(i)];
        o.sched_ns = static_cast<int64_t>(static_cast<double>(i) * interval_ns);
        const int64_t at = start + o.sched_ns;
        while (MonoNanos() < at) {
          int64_t left = at - MonoNanos();
          if (left > 200'000) std::this_thread::sleep_for(std::chrono::nanoseconds(left - 100'000));
        }
        const uint64_t key = key_base + static_cast<uint64_t>(i) + 1;
        const int64_t give_up = MonoNanos() + *retry * 1'000'000;
        for (;;) {
          ++o.attempts;
          if (http == nullptr) {
            auto h = connect();
            if (h.ok()) http = std::move(*h);
          }
          Result<std::string> r = http != nullptr ? call(http.get(), handler, payload, key)
                                                  : Result<std::string>(UnavailableError("no connection"));
          if (r.ok()) {
            o.ok = true;
            answered.fetch_add(1);
            break;
          }
          o.error = std::string(r.status().message());
          if (r.status().code() == StatusCode::kUnavailable ||
              r.status().code() == StatusCode::kDeadlineExceeded) {
            http.reset();  // a broken or stale connection: a new one next time
          }
          if (MonoNanos() > give_up) break;
          retried.fetch_add(1);
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        o.latency_ns = MonoNanos() - at;
        done.fetch_add(1);
      }
    });
  }
  // Progress, once a second.
  const int64_t end = start + *dur * 1'000'000;
  int64_t last_done = 0;
  while (done.load() < total) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int64_t now = MonoNanos();
    if (!f.GetBool("quiet") && (now - start) / 1'000'000'000 != (now - start - 100'000'000) / 1'000'000'000) {
      std::fprintf(stderr, "[load %4.1fs] sent %" PRId64 ", answered %" PRId64 ", retries %" PRId64 "\n",
                   static_cast<double>(now - start) / 1e9, std::min(next.load(), total), answered.load(),
                   retried.load());
    }
    if (now > end + (*retry + *tmo + 5000) * 1'000'000 && done.load() == last_done) break;
    last_done = done.load();
  }
  for (std::thread& t : threads) t.join();

  std::vector<int64_t> lat;
  int64_t lost = 0;
  std::map<int64_t, int64_t> worst_by_second;
  std::string first_error;
  for (const Outcome& o : out) {
    if (!o.ok) {
      ++lost;
      if (first_error.empty()) first_error = o.error;
      continue;
    }
    lat.push_back(o.latency_ns);
    int64_t& w = worst_by_second[o.sched_ns / 1'000'000'000];
    w = std::max(w, o.latency_ns);
  }
  std::printf("load: %s.%s at %" PRId64 "/s for %.1f s through the gateway %s, %" PRId64
              " connections\n",
              service.c_str(), handler.c_str(), *rate, static_cast<double>(*dur) / 1000, c.gateway.c_str(),
              *conns);
  std::printf("requests  %" PRId64 " sent, %zu answered, %" PRId64 " lost; %" PRId64
              " retries with the same idempotency key\n",
              total, lat.size(), lost, retried.load());
  if (!lat.empty()) {
    double mx = static_cast<double>(*std::max_element(lat.begin(), lat.end()));
    std::printf("latency   p50 %s  p99 %s  max %s (from the scheduled send time)\n",
                Ms(Pct(lat, 0.5)).c_str(), Ms(Pct(lat, 0.99)).c_str(), Ms(mx).c_str());
    std::string per;
    for (const auto& [s, w] : worst_by_second) per += fmt::format("{}{}s {:.1f}", per.empty() ? "" : ", ", s, w / 1e6);
    std::printf("worst per second (ms): %s\n", per.c_str());
  }
  if (lost > 0) std::printf("first error: %s\n", first_error.c_str());
  int rc = lost > 0 ? 1 : 0;
  if (f.GetBool("counter")) {
    Result<int64_t> after = read_count();
    if (!after.ok()) return CommandFailed(after.status().WithPrefix("reading the count after"));
    const int64_t delta = *after - before;
    const int64_t ok = static_cast<int64_t>(lat.size());
    if (delta == ok) {
      std::printf("counter   %" PRId64 " → %" PRId64 ": %" PRId64 " increments for %" PRId64
                  " answers: none lost, none executed twice\n",
                  before, *after, delta, ok);
    } else {
      std::printf("counter   %" PRId64 " → %" PRId64 ": %" PRId64 " increments for %" PRId64
                  " answers: %s\n",
                  before, *after, delta, ok,
                  delta > ok ? "some requests ran more than once (or were lost after running)"
                             : "ANSWERED INCREMENTS WERE LOST");
      rc = 1;
    }
  }
  return rc;
}

}  // namespace tern::cli
