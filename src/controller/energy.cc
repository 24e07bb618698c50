#include "controller/energy.h"

#include <algorithm>

namespace tern::controller {

EnergyEstimate EnergyPerRequest(const EnergyInputs& in) {
  EnergyEstimate e;
  e.source = in.rapl_j.has_value() ? "rapl" : "model";
  if (in.requests <= 0 || in.interval_s <= 0) return e;
  const double cores = std::max(in.cores, 1e-6);
  e.utilization = std::clamp(in.device_cpu_s / (cores * in.interval_s), 0.0, 1.0);
  const double device_j =
      in.rapl_j.has_value()
          ? std::max(*in.rapl_j, 0.0)
          : (in.idle_w + (in.active_w - in.idle_w) * e.utilization) * in.interval_s;
  const double share =
      in.device_cpu_s > 0 ? std::clamp(in.instance_cpu_s / in.device_cpu_s, 0.0, 1.0) : 0.0;
  e.device_j_per_request = device_j * share / in.requests;
  e.link_j_per_request = std::max(in.bytes, 0.0) * in.j_per_byte / in.requests;
  e.j_per_request = e.device_j_per_request + e.link_j_per_request;
  return e;
}

}  // namespace tern::controller
