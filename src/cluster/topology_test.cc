#include "cluster/topology.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace tern::cluster {
namespace {

std::string Example(const std::string& name) {
  return std::string(TERN_SOURCE_DIR) + "/examples/topologies/" + name;
}

// A valid topology; tests swap one line to break one rule. Line numbers:
//  1 name  2 hosts  3 -h1  4 devices  5 -cpu0  6 kind  7 cores  8 -csd0  9 kind
// 10 datasets  11 -h2  12 devices  13 -cpu1  14 kind  15 links  16 h1-h2
constexpr std::string_view kBase = R"(name: test
hosts:
  - name: h1
    devices:
      - name: cpu0
        kind: cpu
        cores: 2
      - name: csd0
        kind: csd
        datasets: [logs]
  - name: h2
    devices:
      - name: cpu1
        kind: cpu
links:
  - {a: h1, b: h2, latency: 50us, bandwidth: 10gbit}
)";

// kBase with the first occurrence of `from` replaced by `to` (which must exist).
std::string With(std::string_view from, std::string_view to) {
  std::string s(kBase);
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

// Parses `yaml` as "t.yaml" and checks that it fails with kInvalidArgument, a message
// starting "t.yaml:LINE: PATH: " and containing `what`.
::testing::AssertionResult FailsAt(std::string_view yaml, int line, std::string_view path,
                                   std::string_view what) {
  Result<Topology> t = ParseTopology(yaml, "t.yaml");
  if (t.ok()) return ::testing::AssertionFailure() << "parsed, expected an error";
  if (t.status().code() != StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure() << "wrong code: " << t.status();
  }
  const std::string msg(t.status().message());
  const std::string prefix =
      path.empty() ? "t.yaml:" + std::to_string(line) + ": "
                   : "t.yaml:" + std::to_string(line) + ": " + std::string(path) + ": ";
  if (msg.rfind(prefix, 0) != 0) {
    return ::testing::AssertionFailure() << "expected prefix '" << prefix << "', got: " << msg;
  }
  if (msg.find(what) == std::string::npos) {
    return ::testing::AssertionFailure() << "expected '" << what << "' in: " << msg;
  }
  return ::testing::AssertionSuccess() << msg;
}

// ---------------------------------------------------------------------------------------
// Valid input

TEST(TopologyTest, BaseParses) {
  Result<Topology> t = ParseTopology(kBase, "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name, "test");
  ASSERT_EQ(t->hosts.size(), 2u);
  EXPECT_EQ(t->device_count(), 3u);
  ASSERT_EQ(t->links.size(), 1u);
  EXPECT_EQ(t->links[0], (HostLink{"h1", "h2", 50'000, 10e9, 1e-9}));
}

TEST(TopologyTest, LaptopExampleIsWhatTheDemoNeeds) {
  Result<Topology> t = LoadTopologyFile(Example("laptop.yaml"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name, "laptop");
  ASSERT_EQ(t->hosts.size(), 2u);
  EXPECT_EQ(t->hosts[0].name, "h1");
  EXPECT_EQ(t->hosts[1].name, "h2");

  const Device* cpu0 = t->FindDevice("cpu0");
  ASSERT_NE(cpu0, nullptr);
  EXPECT_EQ(cpu0->host, "h1");
  EXPECT_EQ(cpu0->kind, DeviceKind::kCpu);
  EXPECT_EQ(cpu0->cores, 1.0);

  const Device* nic0 = t->FindDevice("nic0");
  ASSERT_NE(nic0, nullptr);
  EXPECT_EQ(nic0->host, "h1");
  EXPECT_EQ(nic0->kind, DeviceKind::kNic);
  EXPECT_EQ(nic0->cores, 0.5);

  const Device* cpu1 = t->FindDevice("cpu1");
  ASSERT_NE(cpu1, nullptr);
  EXPECT_EQ(cpu1->host, "h2");
  EXPECT_EQ(cpu1->kind, DeviceKind::kCpu);

  const Device* csd0 = t->FindDevice("csd0");
  ASSERT_NE(csd0, nullptr);
  EXPECT_EQ(csd0->host, "h2");
  EXPECT_EQ(csd0->kind, DeviceKind::kCsd);
  EXPECT_EQ(csd0->cores, 0.25);
  EXPECT_EQ(csd0->speed, 0.4);
  EXPECT_EQ(csd0->datasets, std::vector<std::string>{"logs"});

  const HostLink* l = t->FindLink("h2", "h1");
  ASSERT_NE(l, nullptr);
  EXPECT_EQ(l->latency_ns, 50'000);
  EXPECT_EQ(l->bandwidth_bps, 1e9);
}

TEST(TopologyTest, RackAndSmartNicExamplesParse) {
  Result<Topology> rack = LoadTopologyFile(Example("rack.yaml"));
  ASSERT_TRUE(rack.ok()) << rack.status();
  EXPECT_EQ(rack->hosts.size(), 3u);
  EXPECT_EQ(rack->links.size(), 3u);
  const Host* s1 = rack->FindHost("s1");
  ASSERT_NE(s1, nullptr);
  int csds = 0;
  for (const Device& d : s1->devices) csds += d.kind == DeviceKind::kCsd;
  EXPECT_EQ(csds, 2);
  const Device* csd0 = rack->FindDevice("csd0");
  ASSERT_NE(csd0, nullptr);
  EXPECT_EQ(csd0->link, (DeviceLink{2'000, 28e9, 40e-12}));  // 3.5GB/s = 28 gbit/s
  EXPECT_EQ(csd0->reserved, 0.25);
  EXPECT_EQ(csd0->datasets, (std::vector<std::string>{"orders", "orders.idx"}));

  Result<Topology> snic = LoadTopologyFile(Example("smartnic.yaml"));
  ASSERT_TRUE(snic.ok()) << snic.status();
  const Device* nic = snic->FindDevice("srv-nic");
  const Device* cpm = snic->FindDevice("srv-cpm");
  ASSERT_NE(nic, nullptr);
  ASSERT_NE(cpm, nullptr);
  EXPECT_EQ(nic->kind, DeviceKind::kNic);
  EXPECT_EQ(cpm->kind, DeviceKind::kCpm);
  EXPECT_EQ(cpm->power, (PowerModel{4, 9.5}));
  EXPECT_EQ(cpm->memory_bytes, uint64_t{16} << 30);
  // Only latency and bandwidth are given: the energy is the nic default.
  EXPECT_EQ(nic->link.energy_j_per_byte, DefaultsFor(DeviceKind::kNic).link.energy_j_per_byte);
  EXPECT_EQ(nic->link.bandwidth_bps, 128e9);
}

TEST(TopologyTest, DefaultsByKind) {
  struct Case {
    const char* kind;
    DeviceKind want;
  } cases[] = {{"cpu", DeviceKind::kCpu}, {"csd", DeviceKind::kCsd}, {"cpm", DeviceKind::kCpm},
               {"nic", DeviceKind::kNic}, {"mem", DeviceKind::kMem}, {"gpu", DeviceKind::kGpu}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.kind);
    Result<Topology> t = ParseTopology(
        std::string("name: one\nhosts:\n  - name: h\n    devices:\n      - {name: d, kind: ") +
            c.kind + "}\n",
        "t.yaml");
    ASSERT_TRUE(t.ok()) << t.status();
    const Device& d = t->hosts[0].devices[0];
    const KindDefaults def = DefaultsFor(c.want);
    EXPECT_EQ(d.kind, c.want);
    EXPECT_EQ(DeviceKindName(d.kind), c.kind);
    EXPECT_EQ(d.host, "h");
    EXPECT_EQ(d.isa, c.want == DeviceKind::kCpu ? "x86_64" : "aarch64");
    EXPECT_EQ(d.isa, def.isa);
    EXPECT_EQ(d.cores, 1.0);
    EXPECT_EQ(d.speed, 1.0);
    EXPECT_EQ(d.memory_bytes, uint64_t{1} << 30);
    EXPECT_EQ(d.reserved, 0.0);
    EXPECT_TRUE(d.datasets.empty());
    EXPECT_EQ(d.power, def.power);
    EXPECT_EQ(d.link, def.link);
    EXPECT_GE(d.power.active_w, d.power.idle_w);
    EXPECT_GT(d.power.idle_w, 0);
    if (c.want == DeviceKind::kCpu) {
      EXPECT_EQ(d.link, (DeviceLink{0, 0, 0}));  // the host's own CPU: nothing to cross
    } else {
      EXPECT_GT(d.link.latency_ns, 0);
      EXPECT_GT(d.link.bandwidth_bps, 0);
      EXPECT_GT(d.link.energy_j_per_byte, 0);
    }
  }
  // A single host needs no links; the host link energy default applies to listed links.
  Result<Topology> t = ParseTopology(kBase, "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->links[0].energy_j_per_byte, 1e-9);
}

TEST(TopologyTest, PartialPowerAndLinkKeepTheOtherDefaults) {
  Result<Topology> t = ParseTopology(With("        datasets: [logs]\n",
                                          "        datasets: [logs]\n        power: {active: 30W}\n"
                                          "        link: {latency: 5us}\n"),
                                     "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  const Device* d = t->FindDevice("csd0");
  const KindDefaults def = DefaultsFor(DeviceKind::kCsd);
  EXPECT_EQ(d->power, (PowerModel{def.power.idle_w, 30}));
  EXPECT_EQ(d->link, (DeviceLink{5'000, def.link.bandwidth_bps, def.link.energy_j_per_byte}));
}

TEST(TopologyTest, AllFieldsWithUnits) {
  Result<Topology> t =
      ParseTopology(With("        datasets: [logs]\n",
                         "        datasets: [logs, orders.v2, a_b-c]\n"
                         "        isa: riscv64\n"
                         "        cores: 0.25\n"
                         "        speed: 1.5\n"
                         "        memory: 1.5GB\n"
                         "        power: {idle: 500mW, active: 2.5W}\n"
                         "        reserved: 0.5\n"
                         "        link: {latency: 1.5ms, bandwidth: 500MB/s, energy: 2.5nJ/B}\n"),
                    "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  const Device* d = t->FindDevice("csd0");
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->isa, "riscv64");
  EXPECT_EQ(d->cores, 0.25);
  EXPECT_EQ(d->speed, 1.5);
  EXPECT_EQ(d->memory_bytes, 1'500'000'000u);
  EXPECT_EQ(d->power, (PowerModel{0.5, 2.5}));
  EXPECT_EQ(d->reserved, 0.5);
  EXPECT_EQ(d->datasets, (std::vector<std::string>{"logs", "orders.v2", "a_b-c"}));
  EXPECT_EQ(d->link, (DeviceLink{1'500'000, 4e9, 2.5e-9}));
}

TEST(TopologyTest, SingleHostNeedsNoLinks) {
  Result<Topology> t = ParseTopology(
      "name: solo\nhosts:\n  - name: h\n    devices: [{name: d, kind: cpu}]\nlinks: []\n",
      "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->links.empty());
  Result<Topology> u = ParseTopology(
      "name: solo\nhosts:\n  - name: h\n    devices: [{name: d, kind: cpu}]\n", "t.yaml");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(*t, *u);
}

TEST(TopologyTest, VersionOneIsAccepted) {
  Result<Topology> t = ParseTopology("version: 1\n" + std::string(kBase), "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(FailsAt("version: 2\n" + std::string(kBase), 1, "version", "expected 1"));
}

TEST(TopologyTest, Lookups) {
  Result<Topology> t = LoadTopologyFile(Example("rack.yaml"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->FindHost("nope"), nullptr);
  EXPECT_EQ(t->FindDevice("nope"), nullptr);
  EXPECT_EQ(t->FindDevice("c1"), nullptr);  // a host, not a device
  EXPECT_EQ(t->FindLink("c1", "c1"), nullptr);
  EXPECT_EQ(t->FindLink("c1", "nope"), nullptr);
  ASSERT_NE(t->FindLink("s1", "c2"), nullptr);
  EXPECT_EQ(t->FindLink("s1", "c2"), t->FindLink("c2", "s1"));
  EXPECT_EQ(t->FindLink("s1", "c2")->a, "c2");
  std::vector<std::string> names;
  for (const Device* d : t->Devices()) names.push_back(d->name);
  EXPECT_EQ(names, (std::vector<std::string>{"c1-cpu", "c2-cpu", "s1-cpu", "csd0", "csd1"}));
  EXPECT_EQ(t->device_count(), 5u);
  EXPECT_EQ(t->FindDevice("csd1"), &t->hosts[2].devices[2]);
}

// ---------------------------------------------------------------------------------------
// Units

TEST(TopologyUnitsTest, ByteSizesAreExact) {
  struct Case {
    const char* text;
    uint64_t want;
  } cases[] = {
      {"1B", 1},
      {"4GiB", uint64_t{4} << 30},
      {"1.5GiB", uint64_t{3} << 29},
      {"512MiB", uint64_t{512} << 20},
      {"0.5KiB", 512},
      {"2TiB", uint64_t{2} << 40},
      {"1kB", 1000},
      {"1KB", 1000},
      {"0.1GB", 100'000'000},
      {"1.5GB", 1'500'000'000},
      {"3MB", 3'000'000},
      {"16TB", 16'000'000'000'000},
      {"0.000001TB", 1'000'000},
      {"10.B", 10},
  };
  for (const Case& c : cases) {
    Result<uint64_t> r = ParseByteSize(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.status();
    EXPECT_EQ(*r, c.want) << c.text;
  }
  struct Bad {
    const char* text;
    const char* expect;
  } bad[] = {
      {"4", "needs a unit"},
      {"4gib", "unknown unit 'gib'"},
      {"4 GiB", "unknown unit ' GiB'"},
      {"-1GiB", "expected a non-negative number"},
      {"0.3B", "not a whole number of bytes"},
      {"1e3B", "unknown unit 'e3B'"},
      {"GiB", "expected a non-negative number"},
      {"99999999999TiB", "too large"},
      {"12345678901234567890123B", "too many digits"},
  };
  for (const Bad& b : bad) {
    Result<uint64_t> r = ParseByteSize(b.text);
    ASSERT_FALSE(r.ok()) << b.text;
    EXPECT_NE(r.status().message().find(b.expect), std::string_view::npos)
        << b.text << ": " << r.status();
  }
}

TEST(TopologyUnitsTest, EnergyAndPowerAreTheNearestDoubles) {
  struct Case {
    const char* text;
    double want;
  } energy[] = {
      {"5pJ/B", 5e-12}, {"0.1pJ/B", 1e-13},     {"10pJ/B", 1e-11},
      {"1nJ/B", 1e-9},  {"2.5nJ/B", 2.5e-9},    {"3fJ/B", 3e-15},
      {"1uJ/B", 1e-6},  {"1\xC2\xB5J/B", 1e-6}, {"0", 0},
      {"0.0", 0},       {"0pJ/B", 0},
  };
  for (const Case& c : energy) {
    Result<double> r = ParseEnergyPerByte(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.status();
    EXPECT_EQ(*r, c.want) << c.text;  // exact, not approximately
  }
  for (const char* bad : {"5", "5pJ", "5pj/B", "5J/B", "-1pJ/B", "pJ/B", "5 pJ/B"}) {
    EXPECT_FALSE(ParseEnergyPerByte(bad).ok()) << bad;
  }
  Case power[] = {{"65W", 65},   {"0.5W", 0.5},   {"500mW", 0.5}, {"1.1W", 1.1},
                  {"1kW", 1000}, {"0.3mW", 3e-4}, {"0", 0}};
  for (const Case& c : power) {
    Result<double> r = ParsePower(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.status();
    EXPECT_EQ(*r, c.want) << c.text;
  }
  for (const char* bad : {"65", "65w", "65 W", "-1W", "W", "1MW"}) {
    EXPECT_FALSE(ParsePower(bad).ok()) << bad;
  }
}

TEST(TopologyUnitsTest, BandwidthInBitsAndBytes) {
  struct Case {
    const char* text;
    double want;
  } cases[] = {{"10gbit", 10e9},         {"16GB/s", 128e9}, {"500MB/s", 4e9},
               {"1GiB/s", 8589934592.0}, {"unlimited", 0},  {"100mbit/s", 1e8}};
  for (const Case& c : cases) {
    Result<Topology> t =
        ParseTopology(With("bandwidth: 10gbit", std::string("bandwidth: ") + c.text), "t.yaml");
    ASSERT_TRUE(t.ok()) << c.text << ": " << t.status();
    EXPECT_EQ(t->links[0].bandwidth_bps, c.want) << c.text;
  }
}

// ---------------------------------------------------------------------------------------
// Every rule, with its line and field path

TEST(TopologyErrorsTest, SyntaxAndShape) {
  Result<Topology> t = ParseTopology("name: [unclosed\n", "t.yaml");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("t.yaml:"), std::string_view::npos);
  EXPECT_NE(t.status().message().find("YAML syntax error"), std::string_view::npos);
  EXPECT_FALSE(ParseTopology("", "t.yaml").ok());
  EXPECT_TRUE(FailsAt("- a\n- b\n", 1, "", "expected a mapping with name, hosts and links"));
  EXPECT_TRUE(FailsAt("name: x\nhosts: 3\n", 2, "hosts", "expected a list of hosts, got \"3\""));
  EXPECT_TRUE(FailsAt(
      With("  - name: h2\n    devices:\n      - name: cpu1\n        kind: cpu\n", "  - h2\n"), 11,
      "hosts[1]", "expected a host"));
  EXPECT_TRUE(FailsAt(With("      - name: cpu1\n        kind: cpu\n", "      - cpu1\n"), 13,
                      "hosts[1].devices[0]", "expected a device"));
  EXPECT_TRUE(FailsAt(With("datasets: [logs]", "datasets: logs"), 10,
                      "hosts[0].devices[1].datasets", "expected a list of dataset names"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "cores: [2]"), 7, "hosts[0].devices[0].cores",
                      "expected a number > 0 (at most 1024), got a list"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "cores:"), 7, "hosts[0].devices[0].cores", "got nothing"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: 20W"), 7, "hosts[0].devices[0].power",
                      "expected a mapping {idle: ..W, active: ..W}"));
  EXPECT_TRUE(FailsAt(With("name: cpu1", "name: {x: 1}"), 13, "hosts[1].devices[0].name",
                      "expected a device name, got a mapping"));
}

TEST(TopologyErrorsTest, MissingFields) {
  EXPECT_TRUE(FailsAt(With("name: test\n", ""), 1, "name", "is missing"));
  EXPECT_TRUE(FailsAt("name: x\nlinks: []\n", 1, "hosts", "is missing"));
  EXPECT_TRUE(FailsAt(With("        kind: csd\n", ""), 8, "hosts[0].devices[1].kind",
                      "is missing; expected a device kind (cpu, csd, cpm, nic, mem, gpu)"));
  EXPECT_TRUE(FailsAt(With("      - name: csd0\n        kind: csd\n", "      - kind: csd\n"), 8,
                      "hosts[0].devices[1].name", "is missing"));
  EXPECT_TRUE(FailsAt(With("    devices:\n      - name: cpu1\n        kind: cpu\n", ""), 11,
                      "hosts[1].devices", "is missing"));
  EXPECT_TRUE(FailsAt(With("latency: 50us, ", ""), 16, "links[0].latency", "is missing"));
  EXPECT_TRUE(FailsAt(With(", bandwidth: 10gbit", ""), 16, "links[0].bandwidth", "is missing"));
  EXPECT_TRUE(FailsAt(With("b: h2, ", ""), 16, "links[0].b", "is missing"));
}

TEST(TopologyErrorsTest, UnknownKeys) {
  EXPECT_TRUE(FailsAt(With("name: test\n", "name: test\nhost:\n"), 2, "host",
                      "unknown field; did you mean 'hosts'? expected one of: version, name, "
                      "hosts, links"));
  EXPECT_TRUE(
      FailsAt(With("cores: 2", "cors: 2"), 7, "hosts[0].devices[0].cors", "did you mean 'cores'?"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "colour: red"), 7, "hosts[0].devices[0].colour",
                      "unknown field; expected one of: name, kind, isa, cores"));
  EXPECT_TRUE(FailsAt(With("    devices:\n      - name: cpu1",
                           "    cpus: 2\n    devices:\n"
                           "      - name: cpu1"),
                      12, "hosts[1].cpus", "unknown field"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: {idel: 1W, active: 2W}"), 7,
                      "hosts[0].devices[0].power.idel", "did you mean 'idle'?"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "link: {latency: 1us, bw: 1gbit}"), 7,
                      "hosts[0].devices[0].link.bw",
                      "expected one of: latency, bandwidth, energy"));
  EXPECT_TRUE(FailsAt(With("bandwidth: 10gbit", "bandwidth: 10gbit, energie: 1pJ/B"), 16,
                      "links[0].energie", "did you mean 'energy'?"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "[a]: 2"), 7, "hosts[0].devices[0].?",
                      "expected a field name, got a list"));
}

TEST(TopologyErrorsTest, DuplicateKeys) {
  // yaml-cpp keeps both entries of a repeated key; the parser refuses the second.
  EXPECT_TRUE(FailsAt(With("hosts:\n", "name: again\nhosts:\n"), 2, "name",
                      "is given twice (first at line 1)"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "cores: 2\n        cores: 3"), 8,
                      "hosts[0].devices[0].cores", "is given twice (first at line 7)"));
  EXPECT_TRUE(FailsAt(With("latency: 50us", "latency: 50us, latency: 60us"), 16, "links[0].latency",
                      "is given twice"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: {idle: 1W, idle: 2W}"), 7,
                      "hosts[0].devices[0].power.idle", "is given twice"));
}

TEST(TopologyErrorsTest, Names) {
  EXPECT_TRUE(
      FailsAt(With("name: test", "name: toolongnm"), 1, "name",
              "expected a cluster name of 1-8 characters [a-z][a-z0-9]*, got \"toolongnm\""));
  EXPECT_TRUE(FailsAt(With("name: test", "name: a-b"), 1, "name", "got \"a-b\""));
  EXPECT_TRUE(FailsAt(With("name: test", "name: 1abc"), 1, "name", "cluster name"));
  EXPECT_TRUE(FailsAt(With("name: test", "name: Test"), 1, "name", "cluster name"));
  EXPECT_TRUE(FailsAt(With("name: h1", "name: abcdefghijklm"), 3, "hosts[0].name",
                      "expected a host name of 1-12 characters [a-z][a-z0-9-]*, got "
                      "\"abcdefghijklm\""));
  EXPECT_TRUE(FailsAt(With("name: h1", "name: H1"), 3, "hosts[0].name", "host name"));
  EXPECT_TRUE(FailsAt(With("name: cpu0", "name: abcdefghijklmnopq"), 5, "hosts[0].devices[0].name",
                      "expected a device name of 1-16 characters"));
  EXPECT_TRUE(
      FailsAt(With("name: cpu0", "name: cpu_0"), 5, "hosts[0].devices[0].name", "got \"cpu_0\""));
  // At the limits: accepted.
  EXPECT_TRUE(ParseTopology(With("name: test", "name: abcdefgh"), "t.yaml").ok());
  Result<Topology> t = ParseTopology(
      "name: a\nhosts:\n  - name: abcdefghij-1\n    devices: [{name: abcdefghijklm-16, kind: "
      "cpu}]\n",
      "t.yaml");
  EXPECT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(FailsAt(With("datasets: [logs]", "datasets: [logs, Logs]"), 10,
                      "hosts[0].devices[1].datasets[1]",
                      "expected a dataset name of 1-63 characters [a-z0-9._-], got \"Logs\""));
  EXPECT_TRUE(FailsAt(With("datasets: [logs]", "datasets: [logs, a, logs]"), 10,
                      "hosts[0].devices[1].datasets[2]",
                      "dataset 'logs' is listed twice (first at datasets[0])"));
  EXPECT_TRUE(FailsAt(With("datasets: [logs]", "datasets: [[x]]"), 10,
                      "hosts[0].devices[1].datasets[0]", "expected a dataset name, got a list"));
  EXPECT_TRUE(
      FailsAt(With("cores: 2", "isa: x86 64"), 7, "hosts[0].devices[0].isa", "got \"x86 64\""));
}

TEST(TopologyErrorsTest, DuplicateHostsAndDevices) {
  EXPECT_TRUE(FailsAt(With("- name: h2", "- name: h1"), 11, "hosts[1].name",
                      "host 'h1' is already defined at hosts[0]"));
  // Device names are unique across hosts, not just within one.
  EXPECT_TRUE(FailsAt(With("name: cpu1", "name: cpu0"), 13, "hosts[1].devices[0].name",
                      "device 'cpu0' is already defined at hosts[0].devices[0]"));
  EXPECT_TRUE(FailsAt(With("name: csd0", "name: cpu0"), 8, "hosts[0].devices[1].name",
                      "already defined at hosts[0].devices[0]"));
}

TEST(TopologyErrorsTest, HostsWithoutDevicesAndEmptyTopologies) {
  EXPECT_TRUE(
      FailsAt(With("    devices:\n      - name: cpu1\n        kind: cpu\n", "    devices: []\n"),
              12, "hosts[1].devices", "host 'h2' has no devices; expected at least one"));
  EXPECT_TRUE(FailsAt("name: x\nhosts: []\n", 2, "hosts", "expected at least one host"));
}

TEST(TopologyErrorsTest, Kinds) {
  EXPECT_TRUE(FailsAt(With("kind: csd", "kind: ssd"), 9, "hosts[0].devices[1].kind",
                      "expected one of cpu, csd, cpm, nic, mem, gpu, got \"ssd\""));
  EXPECT_TRUE(FailsAt(With("kind: csd", "kind: CSD"), 9, "hosts[0].devices[1].kind", "\"CSD\""));
  EXPECT_FALSE(ParseDeviceKind("tpu").ok());
  EXPECT_EQ(*ParseDeviceKind("mem"), DeviceKind::kMem);
}

TEST(TopologyErrorsTest, OutOfRangeValues) {
  EXPECT_TRUE(FailsAt(With("cores: 2", "cores: -1"), 7, "hosts[0].devices[0].cores",
                      "expected a number > 0 (at most 1024), got \"-1\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "cores: 0"), 7, "hosts[0].devices[0].cores", "got \"0\""));
  EXPECT_TRUE(
      FailsAt(With("cores: 2", "cores: 2000"), 7, "hosts[0].devices[0].cores", "got \"2000\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "cores: two"), 7, "hosts[0].devices[0].cores",
                      "expected a number > 0 (at most 1024), got \"two\""));
  EXPECT_TRUE(
      FailsAt(With("cores: 2", "cores: 1e3"), 7, "hosts[0].devices[0].cores", "got \"1e3\""));
  EXPECT_TRUE(
      FailsAt(With("cores: 2", "cores: .nan"), 7, "hosts[0].devices[0].cores", "got \".nan\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "speed: 0"), 7, "hosts[0].devices[0].speed",
                      "expected a number > 0 (at most 1000), got \"0\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "reserved: 1"), 7, "hosts[0].devices[0].reserved",
                      "expected a number >= 0 and < 1, got \"1\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "reserved: -0.1"), 7, "hosts[0].devices[0].reserved",
                      "got \"-0.1\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "memory: 0B"), 7, "hosts[0].devices[0].memory",
                      "expected a size from 1MiB to 64TiB, like 4GiB, got \"0B\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "memory: 128TiB"), 7, "hosts[0].devices[0].memory",
                      "got \"128TiB\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "memory: 4gb"), 7, "hosts[0].devices[0].memory",
                      "size '4gb': unknown unit 'gb'"));
  EXPECT_TRUE(
      FailsAt(With("cores: 2", "memory: 4096"), 7, "hosts[0].devices[0].memory", "needs a unit"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: {idle: 30W, active: 20W}"), 7,
                      "hosts[0].devices[0].power.active",
                      "expected a power >= idle (30W), got \"20W\""));
  // The idle default of a cpu is 20W: an active power below it says so.
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: {active: 10W}"), 7,
                      "hosts[0].devices[0].power.active",
                      "expected a power >= idle (20W, the default for cpu), got \"10W\""));
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: {idle: 100W}"), 7,
                      "hosts[0].devices[0].power.active", "got 65W (the default for cpu)"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: {idle: -1W}"), 7, "hosts[0].devices[0].power.idle",
                      "expected a non-negative number"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "power: {idle: 1W, active: 200kW}"), 7,
                      "hosts[0].devices[0].power.active", "expected a power up to 100kW"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "link: {latency: -1us}"), 7,
                      "hosts[0].devices[0].link.latency", "expected a non-negative number"));
  EXPECT_TRUE(FailsAt(With("cores: 2", "link: {energy: 2uJ/B}"), 7,
                      "hosts[0].devices[0].link.energy",
                      "expected an energy per byte from 0 to 1uJ/B, got \"2uJ/B\""));
  EXPECT_TRUE(
      FailsAt(With("latency: 50us", "latency: 2h"), 16, "links[0].latency", "unknown unit 'h'"));
  EXPECT_TRUE(FailsAt(With("bandwidth: 10gbit", "bandwidth: 10Gb/s"), 16, "links[0].bandwidth",
                      "ambiguous unit 'Gb/s'; write 'gbit' for bits or 'GB/s' for bytes"));
  EXPECT_TRUE(FailsAt(With("bandwidth: 10gbit", "bandwidth: 10mbps"), 16, "links[0].bandwidth",
                      "ambiguous unit 'mbps'"));
  EXPECT_TRUE(FailsAt(With("bandwidth: 10gbit", "bandwidth: 10gbit, energy: 5pj/B"), 16,
                      "links[0].energy", "unknown unit 'pj/B'"));
}

TEST(TopologyErrorsTest, Links) {
  EXPECT_TRUE(
      FailsAt(With("b: h2", "b: h3"), 16, "links[0].b", "unknown host \"h3\" (hosts: h1, h2)"));
  EXPECT_TRUE(FailsAt(With("a: h1", "a: h9"), 16, "links[0].a", "unknown host \"h9\""));
  EXPECT_TRUE(FailsAt(With("b: h2", "b: h1"), 16, "links[0].b", "a link from host 'h1' to itself"));
  // b-a after a-b is the same link.
  const std::string twice =
      std::string(kBase) + "  - {a: h2, b: h1, latency: 60us, bandwidth: 1gbit}\n";
  EXPECT_TRUE(FailsAt(twice, 17, "links[1]", "h2-h1 is the same link as links[0] (h1-h2)"));
  const std::string again =
      std::string(kBase) + "  - {a: h1, b: h2, latency: 60us, bandwidth: 1gbit}\n";
  EXPECT_TRUE(FailsAt(again, 17, "links[1]", "h1-h2 is the same link as links[0]"));
}

TEST(TopologyErrorsTest, EveryPairOfHostsNeedsALink) {
  // Two hosts and no links.
  EXPECT_TRUE(FailsAt(With("links:\n  - {a: h1, b: h2, latency: 50us, bandwidth: 10gbit}\n", ""), 1,
                      "links",
                      "every pair of hosts needs a link; missing: h1-h2 (add e.g. {a: h1, b: "
                      "h2, latency: 50us, bandwidth: 10gbit})"));
  EXPECT_TRUE(FailsAt(With("  - {a: h1, b: h2, latency: 50us, bandwidth: 10gbit}\n", "  []\n"), 15,
                      "links", "missing: h1-h2"));
  // Three hosts, one pair left out: it points at the links list and names the pair.
  const std::string three = With("links:\n",
                                 "  - name: h3\n    devices: [{name: cpu3, kind: cpu}]\nlinks:\n"
                                 "  - {a: h3, b: h1, latency: 1ms, bandwidth: 1gbit}\n");
  EXPECT_TRUE(FailsAt(three, 17, "links", "missing: h2-h3 (add e.g. {a: h2, b: h3,"));
}

TEST(TopologyErrorsTest, AtMost64Devices) {
  auto topology = [](int devices) {
    std::string s = "name: big\nhosts:\n  - name: h\n    devices:\n";
    for (int i = 0; i < devices; ++i) {
      s += "      - {name: d" + std::to_string(i) + ", kind: cpu, cores: 0.1}\n";
    }
    return s;
  };
  Result<Topology> ok = ParseTopology(topology(64), "t.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->device_count(), 64u);
  // Device 65 is on line 4 + 65.
  EXPECT_TRUE(FailsAt(topology(65), 69, "hosts[0].devices[64]",
                      "is device number 65; a topology holds at most 64 devices"));
}

TEST(TopologyErrorsTest, LoadFileNamesThePath) {
  Result<Topology> missing = LoadTopologyFile("/nonexistent/tern/topo.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/tern/topo.yaml"), std::string_view::npos);
}

// ---------------------------------------------------------------------------------------
// JSON

TEST(TopologyJsonTest, RoundTripsTheExamples) {
  for (const char* name : {"laptop.yaml", "rack.yaml", "smartnic.yaml"}) {
    SCOPED_TRACE(name);
    Result<Topology> t = LoadTopologyFile(Example(name));
    ASSERT_TRUE(t.ok()) << t.status();
    const std::string json = TopologyToJson(*t);
    Result<Topology> back = TopologyFromJson(json);
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
    EXPECT_EQ(*back, *t);
    EXPECT_EQ(TopologyToJson(*back), json);
  }
}

TEST(TopologyJsonTest, RoundTripsAwkwardNumbers) {
  Result<Topology> t =
      ParseTopology(With("cores: 2",
                         "cores: 0.1\n        speed: 0.3333333333333333\n        memory: 1.1GB\n"
                         "        power: {idle: 0.1W, active: 0.7W}\n        reserved: 0.999\n"
                         "        link: {latency: 1ns, bandwidth: 1.1bit, energy: 0.1fJ/B}"),
                    "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  Result<Topology> back = TopologyFromJson(TopologyToJson(*t));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, *t);
}

TEST(TopologyJsonTest, ShapeUsesBaseUnits) {
  Result<Topology> t = ParseTopology(kBase, "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string json = TopologyToJson(*t);
  EXPECT_NE(json.find("\"memory_bytes\":1073741824"), std::string::npos) << json;
  EXPECT_NE(json.find("\"latency_ns\":50000"), std::string::npos) << json;
  EXPECT_NE(json.find("\"kind\":\"csd\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"datasets\":[\"logs\"]"), std::string::npos) << json;
}

TEST(TopologyJsonTest, RejectsBadInput) {
  Result<Topology> t = ParseTopology(kBase, "t.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string good = TopologyToJson(*t);
  auto fails = [](const std::string& json, std::string_view what) -> ::testing::AssertionResult {
    Result<Topology> r = TopologyFromJson(json);
    if (r.ok()) return ::testing::AssertionFailure() << "parsed: " << json;
    if (r.status().message().find(what) == std::string_view::npos) {
      return ::testing::AssertionFailure() << "expected '" << what << "' in " << r.status();
    }
    return ::testing::AssertionSuccess();
  };
  auto replace = [&good](std::string_view from, std::string_view to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) s.replace(at, from.size(), to);
    return s;
  };
  EXPECT_TRUE(fails("{", "topology JSON: not valid JSON"));
  EXPECT_TRUE(fails("[]", "expected an object"));
  EXPECT_TRUE(fails(replace("\"name\":\"test\"", "\"name\":\"test\",\"name\":\"x\""),
                    "field 'name' is given twice"));
  EXPECT_TRUE(fails(replace("\"cores\":2.0", "\"cores\":-1.0"),
                    "topology JSON: hosts[0].devices[0].cores: expected a number > 0 (at most "
                    "1024), got -1"));
  EXPECT_TRUE(fails(replace("\"cores\":2.0", "\"cores\":\"2\""),
                    "hosts[0].devices[0].cores: expected a number, got \"2\""));
  EXPECT_TRUE(
      fails(replace("\"cores\":2.0", "\"cors\":2.0"), "hosts[0].devices[0].cors: unknown field"));
  EXPECT_TRUE(fails(replace("\"latency_ns\":50000", "\"latency_ns\":5.5"),
                    "links[0].latency_ns: expected an integer"));
  EXPECT_TRUE(fails(replace("\"memory_bytes\":1073741824", "\"memory_bytes\":-1"),
                    "memory_bytes: expected a non-negative integer"));
  EXPECT_TRUE(fails(replace("\"kind\":\"csd\"", "\"kind\":\"ssd\""), "kind: expected one of"));
  EXPECT_TRUE(fails(replace("\"b\":\"h2\"", "\"b\":\"h1\""), "links[0].b: a link from host"));
  EXPECT_TRUE(fails(replace(",\"reserved\":0.0", ""), "hosts[0].devices[0].reserved: is missing"));
  EXPECT_TRUE(fails(replace("\"links\":[{", "\"links\":[],\"x\":[{"), "x: unknown field"));
}

// ---------------------------------------------------------------------------------------
// Description

TEST(TopologyDescribeTest, AlignedTables) {
  Result<Topology> t = LoadTopologyFile(Example("rack.yaml"));
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string text = DescribeTopology(*t);
  EXPECT_EQ(text.rfind("topology rack1: 3 hosts, 5 devices, 3 host links\n", 0), 0u) << text;
  std::vector<std::string> lines;
  for (size_t at = 0; at < text.size();) {
    const size_t nl = text.find('\n', at);
    lines.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  // Header, blank, table header, 5 devices, blank, link header, 3 links.
  ASSERT_EQ(lines.size(), 13u) << text;
  const size_t kind_col = lines[2].find("KIND");
  const size_t mem_col = lines[2].find("MEMORY");
  ASSERT_NE(kind_col, std::string::npos);
  ASSERT_NE(mem_col, std::string::npos);
  for (size_t i = 3; i < 8; ++i) {
    SCOPED_TRACE(lines[i]);
    const std::string kind = lines[i].substr(kind_col, 4);
    EXPECT_TRUE(kind == "csd " || kind == "cpu ") << kind;
    EXPECT_NE(lines[i].find_first_not_of(' ', mem_col), std::string::npos);
    EXPECT_NE(lines[i][mem_col], ' ');
    EXPECT_EQ(lines[i][mem_col - 1], ' ');
  }
  EXPECT_NE(lines[6].find("2GiB"), std::string::npos) << lines[6];
  EXPECT_NE(lines[6].find("6W/14W"), std::string::npos) << lines[6];
  EXPECT_NE(lines[6].find("2us 28gbit 40pJ/B"), std::string::npos) << lines[6];
  EXPECT_NE(lines[6].find("orders,orders.idx"), std::string::npos) << lines[6];
  EXPECT_NE(lines[3].find("local"), std::string::npos) << lines[3];
  EXPECT_EQ(lines[9].rfind("LINK", 0), 0u);
  EXPECT_NE(lines[10].find("c1-c2"), std::string::npos);
  EXPECT_NE(lines[10].find("20us"), std::string::npos);
  EXPECT_NE(lines[10].find("10gbit"), std::string::npos);
  EXPECT_NE(lines[10].find("1nJ/B"), std::string::npos);
  EXPECT_EQ(lines[10].find("20us"), lines[9].find("LATENCY"));
}

}  // namespace
}  // namespace tern::cluster
