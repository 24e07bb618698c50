#include "dataplane/location.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace tern::dataplane {
namespace {

InstanceLocation Loc(const std::string& instance, const std::string& service,
                     const std::string& agent, uint64_t epoch, const std::string& tcp = "") {
  InstanceLocation l;
  l.instance = instance;
  l.service = service;
  l.agent = agent;
  l.host = agent.substr(0, agent.find('-'));
  l.tcp = tcp.empty() ? "127.0.0.1:7400" : tcp;
  l.epoch = epoch;
  return l;
}

// --- LocationTable

TEST(LocationTableTest, UpsertInsertsAndLooksUpByService) {
  LocationTable t;
  EXPECT_EQ(t.version(), 0u);
  ASSERT_TRUE(*t.Upsert(Loc("counter-2", "counter", "h1-cpu0", 1)));
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h2-cpu0", 1)));
  ASSERT_TRUE(*t.Upsert(Loc("echo-1", "echo", "h1-cpu0", 1)));
  std::vector<InstanceLocation> c = t.Lookup("counter");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].instance, "counter-1");  // ordered by instance id
  EXPECT_EQ(c[1].instance, "counter-2");
  EXPECT_TRUE(t.Lookup("nope").empty());
  ASSERT_TRUE(t.Find("echo-1").has_value());
  EXPECT_EQ(t.Find("echo-1")->agent, "h1-cpu0");
  EXPECT_FALSE(t.Find("echo-2").has_value());
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t.All().size(), 3u);
  EXPECT_EQ(t.version(), 3u);
}

TEST(LocationTableTest, HigherEpochMovesAnInstance) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 1)));
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h2-csd0", 2, "10.0.0.2:7400")));
  EXPECT_EQ(t.Find("counter-1")->agent, "h2-csd0");
  EXPECT_EQ(t.Find("counter-1")->epoch, 2u);
  EXPECT_EQ(t.Lookup("counter").size(), 1u);
  EXPECT_EQ(t.version(), 2u);
}

TEST(LocationTableTest, StaleUpsertIsIgnoredAndReported) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h2-cpu0", 5)));
  const uint64_t v = t.version();
  Result<bool> r = t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 4));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(*r);
  EXPECT_EQ(t.Find("counter-1")->agent, "h2-cpu0");
  EXPECT_EQ(t.version(), v) << "an ignored update must not bump the version";
}

TEST(LocationTableTest, EqualEpochSameFieldsIsANoOp) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 3)));
  const uint64_t v = t.version();
  Result<bool> r = t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 3));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  EXPECT_EQ(t.version(), v);
}

TEST(LocationTableTest, EqualEpochDifferentFieldsIsAConflict) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 3)));
  const uint64_t v = t.version();
  Result<bool> r = t.Upsert(Loc("counter-1", "counter", "h2-cpu0", 3));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("counter-1 at epoch 3"), std::string_view::npos)
      << r.status();
  EXPECT_NE(r.status().message().find("agent=h2-cpu0"), std::string_view::npos) << r.status();
  EXPECT_EQ(t.Find("counter-1")->agent, "h1-cpu0");
  EXPECT_EQ(t.version(), v);
}

TEST(LocationTableTest, UpsertRejectsEmptyIds) {
  LocationTable t;
  InstanceLocation l = Loc("", "counter", "h1-cpu0", 1);
  EXPECT_EQ(t.Upsert(l).status().code(), StatusCode::kInvalidArgument);
  l = Loc("counter-1", "", "h1-cpu0", 1);
  EXPECT_EQ(t.Upsert(l).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(t.version(), 0u);
}

TEST(LocationTableTest, UpsertCanChangeTheService) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("x-1", "old", "h1-cpu0", 1)));
  ASSERT_TRUE(*t.Upsert(Loc("x-1", "new", "h1-cpu0", 2)));
  EXPECT_TRUE(t.Lookup("old").empty());
  ASSERT_EQ(t.Lookup("new").size(), 1u);
  EXPECT_EQ(t.size(), 1u);
}

TEST(LocationTableTest, RemoveFollowsEpochRules) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 4)));
  const uint64_t v = t.version();

  Status older = t.Remove("counter-1", 3);
  EXPECT_EQ(older.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(older.message().find("holds epoch 4"), std::string_view::npos) << older;
  EXPECT_TRUE(t.Find("counter-1").has_value());
  EXPECT_EQ(t.version(), v);

  EXPECT_EQ(t.Remove("nope-1", 9).code(), StatusCode::kNotFound);

  ASSERT_TRUE(t.Remove("counter-1", 4).ok());
  EXPECT_FALSE(t.Find("counter-1").has_value());
  EXPECT_TRUE(t.Lookup("counter").empty());
  EXPECT_EQ(t.version(), v + 1);
}

TEST(LocationTableTest, LateUpsertAfterRemoveIsStale) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 4)));
  ASSERT_TRUE(t.Remove("counter-1", 5).ok());
  // An update of epoch 5 or older raced with the removal and lost.
  EXPECT_FALSE(*t.Upsert(Loc("counter-1", "counter", "h1-cpu0", 5)));
  EXPECT_FALSE(t.Find("counter-1").has_value());
  // A restart at a newer epoch comes back.
  EXPECT_TRUE(*t.Upsert(Loc("counter-1", "counter", "h2-cpu0", 6)));
  EXPECT_EQ(t.Find("counter-1")->agent, "h2-cpu0");
}

TEST(LocationTableTest, ReplaceSwapsTheContentAndBumpsTheVersion) {
  LocationTable t;
  ASSERT_TRUE(*t.Upsert(Loc("a-1", "a", "h1-cpu0", 1)));
  ASSERT_TRUE(t.Remove("a-1", 7).ok());
  const uint64_t v = t.version();
  t.Replace({Loc("b-1", "b", "h1-cpu0", 2), Loc("b-1", "b", "h2-cpu0", 1),
             Loc("a-1", "a", "h1-cpu0", 1)});
  EXPECT_EQ(t.version(), v + 1);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.Find("b-1")->agent, "h1-cpu0") << "the higher epoch wins within a snapshot";
  EXPECT_TRUE(t.Find("a-1").has_value()) << "a snapshot clears removal memory";
  std::vector<InstanceLocation> all = t.All();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].service, "a");
  EXPECT_EQ(all[1].service, "b");
}

TEST(LocationTableTest, ConcurrentReadersAndWritersSettleOnTheNewestEpoch) {
  LocationTable t;
  constexpr int kInstances = 8;
  constexpr uint64_t kEpochs = 300;
  std::atomic<bool> done{false};
  std::atomic<int> bad{0};

  // Two writers publish the same sequence of epochs for every instance, interleaved:
  // equal epochs agree (agent is a function of the epoch), so no write may fail.
  auto writer = [&](int offset) {
    for (uint64_t e = 1; e <= kEpochs; ++e) {
      for (int i = 0; i < kInstances; ++i) {
        int k = (i + offset) % kInstances;
        InstanceLocation l = Loc("svc-" + std::to_string(k), k % 2 ? "odd" : "even",
                                 "h" + std::to_string(e % 3) + "-cpu0", e);
        Result<bool> r = t.Upsert(l);
        if (!r.ok()) bad.fetch_add(1);
      }
    }
  };
  auto reader = [&] {
    uint64_t last_version = 0;
    while (!done.load()) {
      const uint64_t v = t.version();
      if (v < last_version) bad.fetch_add(1);
      last_version = v;
      for (const char* svc : {"odd", "even"}) {
        for (const InstanceLocation& l : t.Lookup(svc)) {
          const bool odd = (l.instance.back() - '0') % 2 == 1;
          if (l.service != svc || odd != (std::string(svc) == "odd")) bad.fetch_add(1);
          if (l.agent != "h" + std::to_string(l.epoch % 3) + "-cpu0") bad.fetch_add(1);
        }
      }
    }
  };
  std::vector<std::thread> threads;
  threads.emplace_back(reader);
  threads.emplace_back(reader);
  threads.emplace_back(writer, 0);
  threads.emplace_back(writer, 3);
  threads[2].join();
  threads[3].join();
  done.store(true);
  threads[0].join();
  threads[1].join();

  EXPECT_EQ(bad.load(), 0);
  ASSERT_EQ(t.size(), static_cast<size_t>(kInstances));
  for (const InstanceLocation& l : t.All()) EXPECT_EQ(l.epoch, kEpochs) << l.instance;
  // Every epoch of every instance was stored exactly once.
  EXPECT_EQ(t.version(), kEpochs * kInstances);
}

// --- YAML

constexpr char kGoodYaml[] = R"(# the emulated cluster
locations:
  - instance: counter-1
    service: counter
    agent: host1-cpu0
    host: host1
    tcp: 127.0.0.1:7400
    shm: /run/tern/host1-cpu0.sock
    epoch: 3
  - instance: counter-2
    service: counter
    agent: host2-csd0
    tcp: 127.0.0.1:7401
)";

TEST(LocationParseTest, YamlGood) {
  Result<std::vector<InstanceLocation>> r = ParseLocationsYaml(kGoodYaml, "loc.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  const InstanceLocation& a = (*r)[0];
  EXPECT_EQ(a.instance, "counter-1");
  EXPECT_EQ(a.service, "counter");
  EXPECT_EQ(a.agent, "host1-cpu0");
  EXPECT_EQ(a.host, "host1");
  EXPECT_EQ(a.tcp, "127.0.0.1:7400");
  EXPECT_EQ(a.shm, "/run/tern/host1-cpu0.sock");
  EXPECT_EQ(a.epoch, 3u);
  const InstanceLocation& b = (*r)[1];
  EXPECT_EQ(b.host, "host2-csd0") << "host defaults to the agent";
  EXPECT_EQ(b.shm, "");
  EXPECT_EQ(b.epoch, 1u) << "epoch defaults to 1";
}

TEST(LocationParseTest, YamlEmptyDocumentsAreEmptyLists) {
  for (const char* text : {"", "# nothing\n", "locations:\n", "locations: []\n"}) {
    Result<std::vector<InstanceLocation>> r = ParseLocationsYaml(text, "x");
    ASSERT_TRUE(r.ok()) << text << ": " << r.status();
    EXPECT_TRUE(r->empty());
  }
}

TEST(LocationParseTest, YamlLocalAgentMayOmitAddresses) {
  constexpr char kLocal[] = "locations:\n  - {instance: a-1, service: a, agent: me}\n";
  EXPECT_TRUE(ParseLocationsYaml(kLocal, "x", "me").ok());
  Result<std::vector<InstanceLocation>> r = ParseLocationsYaml(kLocal, "x", "other");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("x:2: locations[0]: field 'tcp': instance a-1 on agent me "
                                      "has neither a tcp nor a shm address"),
            std::string_view::npos)
      << r.status();
  EXPECT_FALSE(ParseLocationsYaml(kLocal, "x").ok());
}

struct BadCase {
  const char* text;
  const char* expect;  // substring of the error message
};

class LocationYamlBadTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(LocationYamlBadTest, RejectsWithLineAndField) {
  Result<std::vector<InstanceLocation>> r = ParseLocationsYaml(GetParam().text, "loc.yaml");
  ASSERT_FALSE(r.ok()) << GetParam().text;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(GetParam().expect), std::string_view::npos)
      << "got: " << r.status();
}

constexpr char kHead[] = "locations:\n  - instance: a-1\n    service: a\n    agent: h1\n";

INSTANTIATE_TEST_SUITE_P(
    Cases, LocationYamlBadTest,
    ::testing::Values(
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    tcp: 127.0.0.1:1\n    prot: 4\n",
                "loc.yaml:6: locations[0]: field 'prot': unknown field (expected one of: "
                "instance, service, agent, host, tcp, shm, epoch)"},
        BadCase{"locations:\n  - instance: a-1\n    agent: h1\n    tcp: 127.0.0.1:1\n",
                "loc.yaml:2: locations[0]: field 'service': is missing"},
        BadCase{"locations:\n  - service: a\n    agent: h1\n    tcp: 127.0.0.1:1\n",
                "field 'instance': is missing"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    tcp: 127.0.0.1:1\n",
                "field 'agent': is missing"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    tcp: 127.0.0.1:1\n    epoch: zero\n",
                "loc.yaml:6: locations[0]: field 'epoch': expected an integer >= 1, got 'zero'"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    tcp: 127.0.0.1:1\n    epoch: 0\n",
                "field 'epoch': expected an integer >= 1, got '0'"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    tcp: 127.0.0.1:1\n    epoch: -2\n",
                "field 'epoch': expected an integer >= 1, got '-2'"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    tcp: 127.0.0.1:1\n    epoch: 99999999999999999999\n",
                "field 'epoch': expected an integer >= 1"},
        BadCase{"locations:\n"
                "  - {instance: a-1, service: a, agent: h1, tcp: '127.0.0.1:1'}\n"
                "  - {instance: a-2, service: a, agent: h1, tcp: '127.0.0.1:1'}\n"
                "  - {instance: a-1, service: a, agent: h2, tcp: '127.0.0.1:2'}\n",
                "loc.yaml:4: locations[2]: field 'instance': 'a-1' is listed twice (first at "
                "locations[0])"},
        BadCase{"locations:\n  - instance: a-1\n    instance: a-2\n", "is given twice"},
        BadCase{"locations:\n  - instance: A_1\n    service: a\n    agent: h1\n"
                "    tcp: 127.0.0.1:1\n",
                "loc.yaml:2: locations[0]: field 'instance': 'A_1' is not a valid name"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    tcp: localhost\n",
                "loc.yaml:5: locations[0]: field 'tcp': 'localhost' is not HOST:PORT"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    shm: run/x.sock\n",
                "field 'shm': 'run/x.sock' is not an absolute socket path"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n"
                "    tcp: [1, 2]\n",
                "loc.yaml:5: locations[0]: field 'tcp': expected a string, got a list"},
        BadCase{"locations:\n  - instance: a-1\n    service: a\n    agent: h1\n    tcp:\n",
                "loc.yaml:5: locations[0]: field 'tcp': expected a string, got nothing"},
        BadCase{"locaciones:\n  - instance: a-1\n",
                "loc.yaml:1: unknown field 'locaciones' (expected: locations)"},
        BadCase{"locations:\n  instance: a-1\n", "loc.yaml:2: field 'locations': expected a list"},
        BadCase{"locations:\n  - just-a-string\n", "loc.yaml:2: locations[0]: expected a mapping"},
        BadCase{"- a\n- b\n", "expected a mapping with a 'locations' list"},
        BadCase{"locations: [\n", "YAML syntax error"}));

TEST(LocationParseTest, YamlHeadHelperIsValid) {
  // Guards the bad cases above: they differ from a good entry only in what they test.
  std::string good = std::string(kHead) + "    tcp: 127.0.0.1:1\n";
  EXPECT_TRUE(ParseLocationsYaml(good, "x").ok());
}

TEST(LocationParseTest, LoadMissingFileNamesThePath) {
  Result<std::vector<InstanceLocation>> r = LoadLocationsFile("/nonexistent/tern/loc.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/nonexistent/tern/loc.yaml"), std::string_view::npos)
      << r.status();
}

// --- JSON

TEST(LocationParseTest, JsonRoundTrips) {
  Result<std::vector<InstanceLocation>> y = ParseLocationsYaml(kGoodYaml, "loc.yaml");
  ASSERT_TRUE(y.ok()) << y.status();
  std::vector<InstanceLocation> v = *y;
  InstanceLocation local = Loc("echo-1", "echo", "me", 18446744073709551615ull);
  local.tcp = "";
  v.push_back(local);
  const std::string json = LocationsToJson(v);
  Result<std::vector<InstanceLocation>> back = ParseLocationsJson(json, "me");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
  EXPECT_EQ(*back, v);
  EXPECT_EQ(LocationsToJson(*back), json);
  EXPECT_EQ(json.find("\"shm\":\"\""), std::string::npos) << "empty addresses are left out";
}

TEST(LocationParseTest, JsonGood) {
  Result<std::vector<InstanceLocation>> r = ParseLocationsJson(
      R"({"locations":[{"instance":"a-1","service":"a","agent":"h1-cpu0","shm":"@tern-h1",)"
      R"("epoch":7}]})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].host, "h1-cpu0");
  EXPECT_EQ((*r)[0].shm, "@tern-h1");
  EXPECT_EQ((*r)[0].epoch, 7u);
  EXPECT_TRUE(ParseLocationsJson("{}")->empty());
  EXPECT_TRUE(ParseLocationsJson(R"({"locations":[]})")->empty());
}

class LocationJsonBadTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(LocationJsonBadTest, RejectsWithIndexAndField) {
  Result<std::vector<InstanceLocation>> r = ParseLocationsJson(GetParam().text);
  ASSERT_FALSE(r.ok()) << GetParam().text;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(GetParam().expect), std::string_view::npos)
      << "got: " << r.status();
}

#define TERN_A0 R"({"instance":"a-1","service":"a","agent":"h1","tcp":"127.0.0.1:1"})"

INSTANTIATE_TEST_SUITE_P(
    Cases, LocationJsonBadTest,
    ::testing::Values(
        BadCase{R"({"locations":[)" TERN_A0
                R"(,{"instance":"a-2","service":"a","agent":"h1","tcp":"127.0.0.1:1","x":1}]})",
                "locations[1]: field 'x': unknown field"},
        BadCase{R"({"locations":[{"instance":"a-1","agent":"h1","tcp":"127.0.0.1:1"}]})",
                "locations[0]: field 'service': is missing"},
        BadCase{R"({"locations":[{"instance":"a-1","service":"a","agent":"h1",)"
                R"("tcp":"127.0.0.1:1","epoch":"3"}]})",
                "locations[0]: field 'epoch': expected an integer >= 1, got the string \"3\""},
        BadCase{R"({"locations":[{"instance":"a-1","service":"a","agent":"h1",)"
                R"("tcp":"127.0.0.1:1","epoch":1.5}]})",
                "locations[0]: field 'epoch': expected an integer >= 1, got the number 1.5"},
        BadCase{R"({"locations":[{"instance":"a-1","service":"a","agent":"h1",)"
                R"("tcp":"127.0.0.1:1","epoch":-1}]})",
                "locations[0]: field 'epoch': expected an integer >= 1, got '-1'"},
        BadCase{R"({"locations":[{"instance":"a-1","service":"a","agent":7,"tcp":"127.0.0.1:1"}]})",
                "locations[0]: field 'agent': expected a string, got 7"},
        BadCase{R"({"locations":[)" TERN_A0 "," TERN_A0 "]}",
                "locations[1]: field 'instance': 'a-1' is listed twice (first at locations[0])"},
        BadCase{R"({"locations":[{"instance":"a-1","instance":"a-2"}]})",
                "key 'instance' is given twice"},
        BadCase{R"({"locations":[)" TERN_A0 R"(],"extra":1})", "unknown field 'extra'"},
        BadCase{R"({"locations":{}})", "field 'locations': expected a list"},
        BadCase{R"({"locations":[3]})", "locations[0]: expected an object"},
        BadCase{R"([])", "expected an object"},
        BadCase{R"({"locations":[)", "locations JSON: parse error"}));

#undef TERN_A0

}  // namespace
}  // namespace tern::dataplane
