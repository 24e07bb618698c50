// Energy telemetry (issue #5, point 2): joules per request of an instance over one
// telemetry interval, from the device's power model (idle + (active − idle) × its
// utilization) or, where the agent reads RAPL (/sys/class/powercap), the energy the
// package really used; plus the link energy of the bytes the instance moved.
//
// The device's energy over the interval is shared among its instances by their CPU time
// (an instance that used 80% of the device's CPU time carries 80% of it, idle power
// included), so a device's instances together account for all of its energy.
// Pure functions over value types; thread-compatible.
#pragma once

#include <optional>
#include <string>

namespace tern::controller {

struct EnergyInputs {
  double idle_w = 0, active_w = 0;  // the device's power model (topology)
  double cores = 1;                 // the device's cores
  double interval_s = 0;            // between the two heartbeats
  double device_cpu_s = 0;          // the agent's CPU time over the interval
  double instance_cpu_s = 0;        // the instance's worker CPU time over the interval
  double requests = 0;              // the instance's requests over the interval
  double bytes = 0;                 // dataset bytes fetched remotely + reply bytes
  double j_per_byte = 0;            // link energy per byte moved
  std::optional<double> rapl_j;     // measured package energy over the interval
};

struct EnergyEstimate {
  double j_per_request = 0;
  double device_j_per_request = 0;
  double link_j_per_request = 0;
  double utilization = 0;  // of the device over the interval
  std::string source;      // "model" or "rapl"
};

// Nothing (all zeros, source "model") when there were no requests or no interval.
EnergyEstimate EnergyPerRequest(const EnergyInputs& in);

}  // namespace tern::controller
