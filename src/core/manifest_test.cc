#include "core/manifest.h"

#include <gtest/gtest.h>

#include <utility>
#include <vector>

namespace tern {
namespace {

constexpr char kGood[] = R"(
name: counter
version: 1.0.0
module: counter.wasm
stateful: true
handlers: [incr, get]
limits:
  memory_mib: 16
  cpu_ms: 50
)";

TEST(ManifestTest, ParsesAllFields) {
  Result<Manifest> m = ParseManifest(kGood, "counter.yaml");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->name, "counter");
  EXPECT_EQ(m->version, "1.0.0");
  EXPECT_EQ(m->module, "counter.wasm");
  EXPECT_TRUE(m->stateful);
  EXPECT_EQ(m->handlers, (std::vector<std::string>{"incr", "get"}));
  EXPECT_EQ(m->limits.memory_mib, 16u);
  EXPECT_EQ(m->limits.cpu_ms, 50u);
  EXPECT_EQ(m->limits.request_kib, 1024u);  // default
  EXPECT_TRUE(m->HasHandler("get"));
  EXPECT_FALSE(m->HasHandler("put"));
}

TEST(ManifestTest, RoundTripsThroughYaml) {
  Result<Manifest> m = ParseManifest(kGood, "a");
  ASSERT_TRUE(m.ok());
  Result<Manifest> again = ParseManifest(ManifestToYaml(*m), "b");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << ManifestToYaml(*m);
  EXPECT_EQ(*m, *again);
}

TEST(ManifestTest, CheckpointMsIsForStatefulServicesAndRoundTrips) {
  std::string yaml = std::string(kGood) + "checkpoint_ms: 2000\n";
  Result<Manifest> m = ParseManifest(yaml, "a");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->checkpoint_ms, 2000u);
  Result<Manifest> again = ParseManifest(ManifestToYaml(*m), "b");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*m, *again);
  EXPECT_EQ(ParseManifest(kGood, "c")->checkpoint_ms, 0u);  // off by default
  Result<Manifest> stateless =
      ParseManifest("name: e\nversion: 1\nhandlers: [a]\ncheckpoint_ms: 500\n", "e.yaml");
  ASSERT_FALSE(stateless.ok());
  EXPECT_NE(stateless.status().message().find("add 'stateful: true'"), std::string_view::npos)
      << stateless.status();
  Result<Manifest> tiny = ParseManifest(std::string(kGood) + "checkpoint_ms: 5\n", "t.yaml");
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("at least 100 ms"), std::string_view::npos)
      << tiny.status();
}

TEST(ManifestTest, DurableIsForStatefulServicesImpliesCheckpointsAndRoundTrips) {
  Result<Manifest> m = ParseManifest(std::string(kGood) + "durable: true\n", "a");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->durable);
  EXPECT_EQ(m->checkpoint_ms, kDurableCheckpointMs);  // implied
  Result<Manifest> again = ParseManifest(ManifestToYaml(*m), "b");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*m, *again);
  Result<Manifest> own =
      ParseManifest(std::string(kGood) + "durable: true\ncheckpoint_ms: 500\n", "c");
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(own->checkpoint_ms, 500u);  // its own period is kept
  EXPECT_FALSE(ParseManifest(kGood, "d")->durable);
  Result<Manifest> stateless =
      ParseManifest("name: e\nversion: 1\nhandlers: [a]\ndurable: true\n", "e.yaml");
  ASSERT_FALSE(stateless.ok());
  EXPECT_NE(stateless.status().message().find("'durable' is for stateful services"),
            std::string_view::npos)
      << stateless.status();
  EXPECT_FALSE(m->durable_strict);
  Result<Manifest> strict = ParseManifest(std::string(kGood) + "durable: strict\n", "s");
  ASSERT_TRUE(strict.ok()) << strict.status();
  EXPECT_TRUE(strict->durable);
  EXPECT_TRUE(strict->durable_strict);
  EXPECT_EQ(strict->checkpoint_ms, kDurableCheckpointMs);
  again = ParseManifest(ManifestToYaml(*strict), "s2");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*strict, *again);
  Result<Manifest> bad = ParseManifest(std::string(kGood) + "durable: always\n", "x.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("expected true, false or strict, got 'always'"),
            std::string_view::npos)
      << bad.status();
}

TEST(ManifestTest, SloP99MsIsExactToTheMicrosecondAndRoundTrips) {
  EXPECT_EQ(ParseManifest(kGood, "a")->slo_p99_us, 0u);  // none by default
  for (const auto& [text, us] : std::vector<std::pair<std::string, uint64_t>>{
           {"2.5", 2500}, {"40", 40000}, {"0.001", 1}, {"0.25", 250}, {"3600000", 3600000000}}) {
    Result<Manifest> m = ParseManifest(std::string(kGood) + "slo_p99_ms: " + text + "\n", "a");
    ASSERT_TRUE(m.ok()) << text << ": " << m.status();
    EXPECT_EQ(m->slo_p99_us, us) << text;
    Result<Manifest> again = ParseManifest(ManifestToYaml(*m), "b");
    ASSERT_TRUE(again.ok()) << again.status() << "\n" << ManifestToYaml(*m);
    EXPECT_EQ(*m, *again) << ManifestToYaml(*m);
  }
  for (const char* bad : {"-1", "1.2345", "2.", ".5", "1e3", "abc", "3600000.001", "[1]", "1,5"}) {
    Result<Manifest> m = ParseManifest(std::string(kGood) + "slo_p99_ms: " + bad + "\n", "s.yaml");
    ASSERT_FALSE(m.ok()) << bad;
    EXPECT_NE(m.status().message().find("field 'slo_p99_ms': expected milliseconds"),
              std::string_view::npos)
        << m.status();
  }
}

struct BadCase {
  const char* yaml;
  const char* expect;  // substring of the error
};

class ManifestBadTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ManifestBadTest, RejectsWithPreciseError) {
  Result<Manifest> m = ParseManifest(GetParam().yaml, "svc.yaml");
  ASSERT_FALSE(m.ok()) << GetParam().yaml;
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find(GetParam().expect), std::string_view::npos)
      << "got: " << m.status();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ManifestBadTest,
    ::testing::Values(
        BadCase{"version: 1\nhandlers: [a]\n", "'name' is missing"},
        BadCase{"name: a\nhandlers: [a]\n", "'version' is missing"},
        BadCase{"name: a\nversion: 1\n", "'handlers' is missing"},
        BadCase{"name: Bad Name\nversion: 1\nhandlers: [a]\n", "not a valid name"},
        BadCase{"name: a\nversion: 1\nhandlers: []\n", "non-empty list"},
        BadCase{"name: a\nversion: 1\nhandlers: [a, a]\n", "listed twice"},
        BadCase{"name: a\nversion: 1\nhandlers: [_initialize]\n", "reserved"},
        BadCase{"name: a\nversion: 1\nhandlers: [a]\nstateful: maybe\n", "true or false"},
        BadCase{"name: a\nversion: 1\nhandlers: [a]\nlimits:\n  memory_mib: 0\n", "svc.yaml:5"},
        BadCase{"name: a\nversion: 1\nhandlers: [a]\nlimits:\n  memory_mib: -3\n",
                "limits.memory_mib"},
        BadCase{"name: a\nversion: 1\nhandlers: [a]\nlimits:\n  cpu: 5\n", "unknown field"},
        BadCase{"name: a\nversion: 1\nhandlers: [a]\ncolour: red\n", "svc.yaml:4: field 'colour'"},
        BadCase{"name: [a\n", "YAML syntax error"},
        BadCase{"- just\n- a list\n", "must be a YAML mapping"},
        BadCase{"", "must be a YAML mapping"},
        BadCase{"name: a\nversion: 1\nhandlers: [a]\nhandlers: [b]\n", "svc.yaml:4: field 'handlers': is given twice"},
        BadCase{"name: a\nversion: 1\nhandlers: [a]\nlimits: {cpu_ms: 1, cpu_ms: 2}\n", "given twice"},
        BadCase{"name: a\nversion: \"1\\x01\"\nhandlers: [a]\n", "printable ASCII"}));

TEST(ManifestTest, OddStringsRoundTrip) {
  Manifest m;
  m.name = "a";
  m.version = "1.0 \"beta\" \\ #2: yes";
  m.module = "dir with spaces/x.wasm";
  m.handlers = {"h"};
  Result<Manifest> back = ParseManifest(ManifestToYaml(m), "x");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << ManifestToYaml(m);
  EXPECT_EQ(*back, m);
}

TEST(ManifestTest, MissingFileIsNotFound) {
  Result<Manifest> m = LoadManifest("/nonexistent/tern/manifest.yaml");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace tern
