// relay: a service that calls other services, for call chains, fan-out and the data
// plane's tests and benchmarks. One module, deployed under several names (relay-a,
// relay-b, ...): who it calls is in the request, so no configuration is needed.
//
//   chain   "svc1,svc2,...|body"  calls svc1.chain with "svc2,...|body"; the last hop
//           (empty list) replies with body. A chain of 4 services = 3 calls.
//   fanout  "N|svc|handler|body"  starts N calls of svc.handler(body) at once, waits for
//           all; replies "calls=N bytes=<sum of reply sizes>". Fails with the first error.
//   call    "svc|handler|timeout_ms|body"  one call; always succeeds itself and replies
//           "<status code>|<reply or error message>", so a test sees what the guest saw.
//   calls   "N|svc|handler|body"  makes N calls one after the other and replies with the
//           N round-trip times in nanoseconds (little-endian int64 each), as the guest
//           measured them: what a call costs the caller, for the benchmarks.
//   echo    replies with the request.
//   sleep   "ms": busy-waits that long (a slow callee), replies "slept".
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tern/tern.hpp"

namespace {

// Splits off the text before the first `sep`; `rest` gets what follows it. False if
// there is no `sep`.
bool SplitFirst(std::string_view in, char sep, std::string_view* head, std::string_view* rest) {
  size_t p = in.find(sep);
  if (p == std::string_view::npos) return false;
  *head = in.substr(0, p);
  *rest = in.substr(p + 1);
  return true;
}

uint32_t ParseU32(std::string_view s) {
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') break;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  return v;
}

std::string Decimal(uint64_t v) {
  char buf[24];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  std::string s;
  while (n > 0) s.push_back(buf[--n]);
  return s;
}

}  // namespace

TERN_HANDLER(relay_chain, "chain") {
  std::string_view req = tern::Request();
  std::string_view hops, body;
  if (!SplitFirst(req, '|', &hops, &body)) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "chain: expected \"svc1,svc2,...|body\"");
  }
  if (hops.empty()) return tern::Reply(body);
  std::string_view next = hops, rest;
  if (!SplitFirst(hops, ',', &next, &rest)) rest = {};
  std::string onward;
  onward.reserve(rest.size() + 1 + body.size());
  onward.append(rest);
  onward.push_back('|');
  onward.append(body);
  tern::CallResult r = tern::Call(next, "chain", onward);
  if (!r.ok()) return tern::Fail(r.status, r.body);
  return tern::Reply(r.body);
}

TERN_HANDLER(relay_fanout, "fanout") {
  std::string_view req = tern::Request();
  std::string_view n_str, svc, handler, body, rest;
  if (!SplitFirst(req, '|', &n_str, &rest) || !SplitFirst(rest, '|', &svc, &rest) ||
      !SplitFirst(rest, '|', &handler, &body)) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "fanout: expected \"N|svc|handler|body\"");
  }
  uint32_t n = ParseU32(n_str);
  if (n == 0 || n > TERN_MAX_OPEN_CALLS) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "fanout: N must be in 1..64");
  }
  std::vector<tern::PendingCall> calls;
  calls.reserve(n);
  for (uint32_t i = 0; i < n; ++i) calls.push_back(tern::StartCall(svc, handler, body));
  uint64_t bytes = 0;
  for (tern::PendingCall& c : calls) {
    tern::CallResult r = c.Wait();
    if (!r.ok()) return tern::Fail(r.status, r.body);
    bytes += r.body.size();
  }
  return tern::Reply("calls=" + Decimal(n) + " bytes=" + Decimal(bytes));
}

TERN_HANDLER(relay_call, "call") {
  std::string_view req = tern::Request();
  std::string_view svc, handler, timeout, body, rest;
  if (!SplitFirst(req, '|', &svc, &rest) || !SplitFirst(rest, '|', &handler, &rest) ||
      !SplitFirst(rest, '|', &timeout, &body)) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "call: expected \"svc|handler|timeout_ms|body\"");
  }
  tern::CallResult r = tern::Call(svc, handler, body, ParseU32(timeout));
  return tern::Reply(Decimal(static_cast<uint64_t>(r.status)) + "|" + r.body);
}

TERN_HANDLER(relay_calls, "calls") {
  std::string_view req = tern::Request();
  std::string_view n_str, svc, handler, body, rest;
  if (!SplitFirst(req, '|', &n_str, &rest) || !SplitFirst(rest, '|', &svc, &rest) ||
      !SplitFirst(rest, '|', &handler, &body)) {
    return tern::Fail(TERN_INVALID_ARGUMENT, "calls: expected \"N|svc|handler|body\"");
  }
  uint32_t n = ParseU32(n_str);
  if (n == 0 || n > 1000000) return tern::Fail(TERN_INVALID_ARGUMENT, "calls: N in 1..1000000");
  std::string out(size_t{n} * 8, '\0');
  for (uint32_t i = 0; i < n; ++i) {
    int64_t t0 = tern::NowNs();
    tern::CallResult r = tern::Call(svc, handler, body);
    int64_t dt = tern::NowNs() - t0;
    if (!r.ok()) return tern::Fail(r.status, r.body);
    for (int b = 0; b < 8; ++b) out[size_t{i} * 8 + b] = static_cast<char>((dt >> (8 * b)) & 0xff);
  }
  return tern::Reply(out);
}

// The request buffer stays as it is until the next request: the reply can be left there.
TERN_HANDLER(relay_echo, "echo") { return tern::ReplyInPlace(tern::Request()); }

TERN_HANDLER(relay_sleep, "sleep") {
  int64_t until = tern::NowNs() + int64_t{ParseU32(tern::Request())} * 1'000'000;
  while (tern::NowNs() < until) {
  }
  return tern::Reply("slept");
}
