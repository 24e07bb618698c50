#include "core/config.h"

#include <gtest/gtest.h>

namespace tern {
namespace {

const std::vector<std::string> kKeys = {"device", "port", "verbose"};

TEST(ConfigTest, ReadsTypedFields) {
  Result<Config> c = Config::Parse("device: csd0\nport: 7400\nverbose: yes\n", "a.yaml", kKeys);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c->String("device"), "csd0");
  EXPECT_EQ(*c->Int("port", 0, 65535), 7400);
  EXPECT_TRUE(*c->Bool("verbose"));
  EXPECT_EQ(c->String("nope").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Config::Parse("", "empty.yaml", kKeys).ok());
}

TEST(ConfigTest, ErrorsNameFileLineAndField) {
  auto err = [](const std::string& yaml) { return Config::Parse(yaml, "a.yaml", kKeys).status(); };
  EXPECT_NE(err("device: x\ncolour: red\n").message().find("a.yaml:2: unknown field 'colour'"),
            std::string_view::npos);
  EXPECT_NE(err("device: [a, b]\n").message().find("expected a single value"),
            std::string_view::npos);
  EXPECT_NE(err("device: [oops\n").message().find("YAML syntax error"), std::string_view::npos);
  EXPECT_NE(err("- a\n").message().find("expected a mapping"), std::string_view::npos);
  Result<Config> c = Config::Parse("device: x\nport: 99999\n", "a.yaml", kKeys);
  ASSERT_TRUE(c.ok());
  Status s = c->Int("port", 0, 65535).status();
  EXPECT_NE(s.message().find("a.yaml:2: field 'port'"), std::string_view::npos) << s;
  Result<Config> b = Config::Parse("verbose: maybe\n", "a.yaml", kKeys);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->Bool("verbose").ok());
}

}  // namespace
}  // namespace tern
