// Status and Result<T>: how tern reports expected failures.
//
// A Status is either OK or a code plus a human-readable message. Codes say what the
// caller should do next (see STYLE.md §4); the same numbers travel on the wire and
// through the guest ABI, so never renumber them.
//
// Ownership: value types, cheap to move; an OK Status holds no allocation.
// Thread-safety: like any value type — distinct objects may be used concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace tern {

enum class StatusCode : int32_t {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,   // fix the request
  kDeadlineExceeded = 4,  // treat as a timeout
  kNotFound = 5,          // fix the request
  kAlreadyExists = 6,     // fix the request
  kPermissionDenied = 7,
  kResourceExhausted = 8,   // back off
  kFailedPrecondition = 9,  // fix the state first
  kAborted = 10,            // retry the whole operation
  kOutOfRange = 11,
  kUnimplemented = 12,  // fall back
  kInternal = 13,       // our bug
  kUnavailable = 14,    // reconnect or try another node
  kDataLoss = 15,
  kUnauthenticated = 16,
};
inline constexpr int32_t kMaxStatusCode = 16;

// Returns the canonical lower-case name ("invalid_argument"); "unknown" for bad values.
std::string_view StatusCodeName(StatusCode code);
// Maps a wire/ABI number back to a code; out-of-range numbers become kUnknown.
StatusCode StatusCodeFromInt(int32_t value);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string_view message);
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  static Status Ok() { return Status(); }

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  std::string_view message() const {
    return rep_ ? std::string_view(rep_->message) : std::string_view();
  }
  // "invalid_argument: manifest: field 'name' is missing"; "ok" when OK.
  std::string ToString() const;
  // Returns a copy whose message is "<prefix>: <message>"; OK stays OK.
  Status WithPrefix(std::string_view prefix) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  std::unique_ptr<Rep> rep_;
};

std::ostream& operator<<(std::ostream& os, const Status& s);

Status InvalidArgumentError(std::string_view msg);
Status NotFoundError(std::string_view msg);
Status AlreadyExistsError(std::string_view msg);
Status FailedPreconditionError(std::string_view msg);
Status ResourceExhaustedError(std::string_view msg);
Status DeadlineExceededError(std::string_view msg);
Status UnavailableError(std::string_view msg);
Status UnimplementedError(std::string_view msg);
Status AbortedError(std::string_view msg);
Status InternalError(std::string_view msg);
Status OutOfRangeError(std::string_view msg);
Status PermissionDeniedError(std::string_view msg);
Status UnauthenticatedError(std::string_view msg);
Status DataLossError(std::string_view msg);
// An error built from errno: "<what>: <strerror(err)>", code chosen from err.
Status ErrnoError(std::string_view what, int err);

// Result<T> holds a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) {
      v_ = Status(StatusCode::kInternal, "Result constructed from an OK Status");
    }
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T value_or(T other) const& { return ok() ? value() : std::move(other); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace tern

#define TERN_STATUS_CONCAT_INNER_(a, b) a##b
#define TERN_STATUS_CONCAT_(a, b) TERN_STATUS_CONCAT_INNER_(a, b)

#define TERN_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::tern::Status tern_status_ = (expr);        \
    if (!tern_status_.ok()) return tern_status_; \
  } while (0)

#define TERN_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#define TERN_ASSIGN_OR_RETURN(lhs, expr) \
  TERN_ASSIGN_OR_RETURN_IMPL_(TERN_STATUS_CONCAT_(tern_result_, __LINE__), lhs, expr)
