#include "core/status.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace tern {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  TERN_ASSIGN_OR_RETURN(int h, Half(x));
  TERN_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  TERN_RETURN_IF_ERROR(Half(x).status());
  return Status::Ok();
}

TEST(StatusTest, OkHasNoMessage) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "ok");
}

TEST(StatusTest, ErrorCarriesCodeAndMessage) {
  Status s = NotFoundError("service 'x'");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "not_found: service 'x'");
  Status copy = s;
  EXPECT_EQ(copy, s);
  EXPECT_EQ(s.WithPrefix("deploy").message(), "deploy: service 'x'");
}

TEST(StatusTest, CodesRoundTripThroughIntegers) {
  for (int i = 0; i <= kMaxStatusCode; ++i) {
    EXPECT_EQ(static_cast<int>(StatusCodeFromInt(i)), i);
    EXPECT_NE(StatusCodeName(StatusCodeFromInt(i)), "");
  }
  EXPECT_EQ(StatusCodeFromInt(99), StatusCode::kUnknown);
  EXPECT_EQ(StatusCodeFromInt(-1), StatusCode::kUnknown);
}

TEST(StatusTest, ErrnoMapsToActionableCodes) {
  EXPECT_EQ(ErrnoError("x", ENOENT).code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoError("x", ECONNREFUSED).code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoError("x", ETIMEDOUT).code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(ErrnoError("open /a", ENOENT).message().find("/a"), std::string_view::npos);
}

TEST(ResultTest, PropagatesErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_FALSE(CheckEven(3).ok());
  EXPECT_EQ(Quarter(5).value_or(-1), -1);
}

TEST(ResultTest, OkStatusIsNotAValue) {
  Result<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace tern
