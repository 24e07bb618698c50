// Energy per request from the power model and from RAPL, with numbers worked by hand.
#include "controller/energy.h"

#include <gtest/gtest.h>

namespace tern::controller {
namespace {

EnergyInputs Csd() {
  EnergyInputs in;
  in.idle_w = 5;
  in.active_w = 12;
  in.cores = 0.25;
  in.interval_s = 1;
  in.device_cpu_s = 0.125;  // half of its quarter core: utilization 0.5
  in.instance_cpu_s = 0.1;  // 80% of the device's CPU time
  in.requests = 10;
  in.bytes = 1e6;
  in.j_per_byte = 1e-9;
  return in;
}

TEST(EnergyTest, SharesTheModelledDevicePowerByCpuTimeAndAddsTheLinks) {
  EnergyEstimate e = EnergyPerRequest(Csd());
  // Device: (5 + (12 - 5) * 0.5) W * 1 s = 8.5 J; 80% of it over 10 requests = 0.68 J.
  EXPECT_DOUBLE_EQ(e.utilization, 0.5);
  EXPECT_NEAR(e.device_j_per_request, 0.68, 1e-12);
  // Link: 1e6 B * 1 nJ/B / 10 = 0.1 mJ.
  EXPECT_NEAR(e.link_j_per_request, 1e-4, 1e-15);
  EXPECT_NEAR(e.j_per_request, 0.6801, 1e-12);
  EXPECT_EQ(e.source, "model");
}

TEST(EnergyTest, SaturatedDeviceRunsAtActivePower) {
  EnergyInputs in = Csd();
  in.device_cpu_s = 0.4;  // more than the quota allows: clamped to utilization 1
  in.instance_cpu_s = 0.4;
  in.bytes = 0;
  EnergyEstimate e = EnergyPerRequest(in);
  EXPECT_DOUBLE_EQ(e.utilization, 1.0);
  EXPECT_NEAR(e.j_per_request, 12.0 / 10, 1e-12);
}

TEST(EnergyTest, RaplReplacesTheModel) {
  EnergyInputs in = Csd();
  in.rapl_j = 20;  // what the package really used over the interval
  EnergyEstimate e = EnergyPerRequest(in);
  EXPECT_EQ(e.source, "rapl");
  EXPECT_NEAR(e.device_j_per_request, 20 * 0.8 / 10, 1e-12);
}

TEST(EnergyTest, NoRequestsNoEnergy) {
  EnergyInputs in = Csd();
  in.requests = 0;
  EXPECT_EQ(EnergyPerRequest(in).j_per_request, 0);
  in = Csd();
  in.device_cpu_s = 0;  // nothing measured: no share
  EnergyEstimate e = EnergyPerRequest(in);
  EXPECT_EQ(e.device_j_per_request, 0);
  EXPECT_NEAR(e.link_j_per_request, 1e-4, 1e-15);
}

}  // namespace
}  // namespace tern::controller
