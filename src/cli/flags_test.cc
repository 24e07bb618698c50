#include "cli/flags.h"

#include <gtest/gtest.h>

namespace tern::cli {
namespace {

Status ParseArgs(Flags* f, std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return f->Parse(static_cast<int>(argv.size()), argv.data(), 0);
}

TEST(FlagsTest, ValuesBooleansPositionalsAndAliases) {
  Flags f("t", "d");
  f.Add("agent", "127.0.0.1:7401", "where");
  f.Add("output", "", "file");
  f.AddAlias("o", "output");
  f.AddBool("json", "raw");
  ASSERT_TRUE(
      ParseArgs(&f, {"svc", "--agent=h:1", "-o", "x.snap", "--json", "--", "--literal"}).ok());
  EXPECT_EQ(f.Get("agent"), "h:1");
  EXPECT_EQ(f.Get("output"), "x.snap");
  EXPECT_TRUE(f.GetBool("json"));
  EXPECT_EQ(f.positional(), (std::vector<std::string>{"svc", "--literal"}));
}

TEST(FlagsTest, ErrorsNameTheProblem) {
  Flags f("t", "d");
  f.Add("repeat", "1", "n");
  Status s = ParseArgs(&f, {"--nope"});
  EXPECT_NE(s.message().find("unknown flag --nope"), std::string_view::npos);
  Flags g("t", "d");
  g.Add("repeat", "1", "n");
  EXPECT_NE(ParseArgs(&g, {"--repeat"}).message().find("needs a value"), std::string_view::npos);
  Flags h("t", "d");
  h.Add("repeat", "1", "n");
  ASSERT_TRUE(ParseArgs(&h, {"--repeat", "abc"}).ok());
  EXPECT_FALSE(h.GetInt("repeat", 1, 10).ok());
  EXPECT_NE(h.Help().find("--repeat VALUE"), std::string::npos);
}

}  // namespace
}  // namespace tern::cli
