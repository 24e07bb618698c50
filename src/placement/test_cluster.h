// Test fixtures for placement_test: a two-host rack with a computational storage drive
// behind a 1 Gbit/s link, and services over its dataset. Test-only.
#pragma once

#include <string>

#include "placement/model.h"

namespace tern::placement::testing {

inline constexpr double kMiB = 1024.0 * 1024.0;

// s1: s1-cpu (2 cores, speed 1, 20/65 W) and csd0 (0.25 core, speed 0.4, 5/12 W, 2 GiB,
//     holds "logs", link 2 µs, 1 Gbit/s, 40 pJ/B);
// c1: c1-cpu (2 cores), where the gateway runs; s1-c1: 20 µs, 10 Gbit/s, 1 nJ/B.
inline ClusterView Rack() {
  ClusterView v;
  DeviceView cpu;
  cpu.name = "s1-cpu";
  cpu.host = "s1";
  cpu.kind = DeviceKind::kCpu;
  cpu.cores = 2;
  cpu.speed = 1;
  cpu.memory_bytes = uint64_t{8} << 30;
  cpu.idle_w = 20;
  cpu.active_w = 65;
  v.devices.push_back(cpu);
  DeviceView csd;
  csd.name = "csd0";
  csd.host = "s1";
  csd.kind = DeviceKind::kCsd;
  csd.cores = 0.25;
  csd.speed = 0.4;
  csd.memory_bytes = uint64_t{2} << 30;
  csd.idle_w = 5;
  csd.active_w = 12;
  csd.datasets = {"logs"};
  csd.link = LinkCost{2000, 1e9, 40e-12};
  v.devices.push_back(csd);
  DeviceView c1 = cpu;
  c1.name = "c1-cpu";
  c1.host = "c1";
  v.devices.push_back(c1);
  v.host_links.push_back(HostLinkView{"s1", "c1", LinkCost{20000, 10e9, 1e-9}});
  return v;
}

// A filter over 64 MiB of "logs" per request at `ns_per_byte` of CPU (speed 1.0),
// returning `selectivity` of the bytes to the gateway on c1; one request per second,
// deterministic CPU time.
inline ServiceProfile Scan(double ns_per_byte = 0.2, double selectivity = 0.001) {
  ServiceProfile p;
  p.name = "scan";
  p.tenant = "acme";
  p.request_rate = 1;
  double bytes = 64 * kMiB;
  p.cpu_ns_per_request = bytes * ns_per_byte;
  p.source = ProfileSource::kMeasured;
  p.reads = {DatasetRead{"logs", bytes}};
  p.caller_host = "c1";
  p.request_bytes = 256;
  p.reply_bytes = bytes * selectivity;
  p.memory_bytes = 64 << 20;
  p.service_cv2 = 0;  // a filter over a fixed 64 MiB takes the same time every request
  return p;
}

}  // namespace tern::placement::testing
