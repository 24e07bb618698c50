// HTTP load for cluster_bench: running wrk (Debian's /usr/bin/wrk 4.1) with a Lua
// script that POSTs a fixed body, parsing what it prints, and the "physical limit"
// target: a minimal HTTP/1.1 keep-alive responder (one thread, epoll) that answers
// every request with a fixed 64-byte body, run as `cluster_bench --serve-limit`.
//
// Thread-safety: the functions are independent; ServeLimit runs on the calling thread
// until the process is killed (or after kServeLimitMaxSeconds).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "core/status.h"

namespace tern::bench::cluster {

inline constexpr const char* kWrk = "/usr/bin/wrk";
inline constexpr int kServeLimitMaxSeconds = 900;

// What one wrk run reports. Latencies in microseconds.
struct WrkResult {
  double requests_per_s = 0;
  uint64_t requests = 0;
  double p50_us = 0, p75_us = 0, p90_us = 0, p99_us = 0;
  double mean_us = 0, max_us = 0;
  uint64_t non_2xx = 0;        // "Non-2xx or 3xx responses"
  uint64_t socket_errors = 0;  // connect + read + write + timeout
};

// Parses wrk's output (run with --latency). kInvalidArgument naming what is missing.
Result<WrkResult> ParseWrkOutput(std::string_view text);

// Writes the Lua script that makes wrk POST `body_bytes` bytes to every request.
Status WriteWrkScript(const std::string& path, size_t body_bytes);

struct WrkRun {
  std::string url;  // "http://127.0.0.1:PORT/v1/invoke/echo/echo"
  std::string script;
  int threads = 1;
  int connections = 1;
  int seconds = 2;
  int cpu = -1;  // >= 0: wrk runs pinned to this CPU
};
// Runs wrk and parses its output; the error carries wrk's output when it failed.
Result<WrkResult> RunWrk(const WrkRun& run);

// The limit responder. ListenLimit binds 127.0.0.1:0 (non-blocking) and returns the
// socket and its port; ServeLimitOn serves on it forever from the calling thread.
// ServeLimit does both, printing "listening PORT" on stdout in between; it returns only
// on a setup error (the exit code to use). Every complete request (pipelined ones too,
// bodies skipped by Content-Length) gets "200 OK" with 64 bytes of 'x'.
Result<std::pair<int, uint16_t>> ListenLimit();
void ServeLimitOn(int listen_fd);
int ServeLimit();

}  // namespace tern::bench::cluster
