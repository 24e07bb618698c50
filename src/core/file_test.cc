#include "core/file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "core/hash.h"
#include "core/ids.h"

namespace tern {
namespace {

TEST(FileTest, WriteAtomicThenRead) {
  std::string dir = ::testing::TempDir() + "tern_file_test_" + std::to_string(getpid()) + "/a/b";
  ASSERT_TRUE(MakeDirs(dir).ok());
  std::string path = dir + "/x.bin";
  std::string data(100000, 'z');
  data[5] = '\0';
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  Result<std::string> back = ReadFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, data);
  ASSERT_TRUE(WriteFileAtomic(path, "short").ok());
  EXPECT_EQ(*ReadFile(path), "short");
}

TEST(FileTest, PathHelpers) {
  EXPECT_EQ(DirName("a/b/c.yaml"), "a/b");
  EXPECT_EQ(DirName("c.yaml"), ".");
  EXPECT_EQ(JoinPath("a/b", "c.wasm"), "a/b/c.wasm");
  EXPECT_EQ(JoinPath("a/b", "/abs.wasm"), "/abs.wasm");
  EXPECT_EQ(JoinPath(".", "c.wasm"), "c.wasm");
}

TEST(HashTest, Sha256KnownVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_NE(Hash64("abcdefgh1", 9), Hash64("abcdefgh2", 9));
}

TEST(IdsTest, NamesAndRequestIds) {
  EXPECT_TRUE(IsValidName("echo"));
  EXPECT_TRUE(IsValidName("word-count.v2"));
  EXPECT_FALSE(IsValidName("-x"));
  EXPECT_FALSE(IsValidName("Upper"));
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName(std::string(64, 'a')));
  RequestIdGenerator gen;
  uint64_t a = gen.Next(), b = gen.Next();
  EXPECT_NE(a, b);
  EXPECT_EQ(MakeInstanceId("counter", 3), "counter-3");
}

TEST(IdsTest, HostPort) {
  std::string host;
  uint16_t port;
  ASSERT_TRUE(ParseHostPort("127.0.0.1:7400", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 7400);
  EXPECT_FALSE(ParseHostPort("nohost", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort(":80", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("h:0", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("h:99999", &host, &port).ok());
  EXPECT_FALSE(ParseHostPort("h:12x", &host, &port).ok());
}

}  // namespace
}  // namespace tern

#include "core/base64.h"

namespace tern {
namespace {
TEST(Base64Test, RoundTripsAllLengthsAndRejectsGarbage) {
  std::string data;
  for (int n = 0; n < 70; ++n) {
    Result<std::string> back = Base64Decode(Base64Encode(data));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, data);
    data += static_cast<char>(n * 37);
  }
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_FALSE(Base64Decode("Zm9v!").ok());
  EXPECT_FALSE(Base64Decode("Zm9").ok());
  EXPECT_FALSE(Base64Decode("Zm=v").ok());
}
}  // namespace
}  // namespace tern
