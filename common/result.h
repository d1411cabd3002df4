// Errors as values at library boundaries.
//
// Every fallible library function returns Result<T> (or Status for no
// value). An Error carries a code, which maps one-to-one onto a documented
// vcryptctl exit code, and a one-line message meant for an administrator:
// what went wrong and, where possible, what to do. Messages never contain
// key material.
#ifndef VCRYPT_COMMON_RESULT_H_
#define VCRYPT_COMMON_RESULT_H_

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace vcrypt {

// Stable: the numeric values are vcryptctl's exit codes (see README.md) and
// the "code" strings appear in the daemon protocol (docs/protocol.md).
enum class ErrorCode : int {
  kInternal = 1,         // a bug or an unexpected system failure
  kUsage = 2,            // bad command line or malformed request
  kDaemonUnavailable = 3,  // vcryptd is not running / socket unreachable
  kPermissionDenied = 4,   // caller is not authorised
  kNotFound = 5,           // no such VM, disk, provider, device or file
  kExists = 6,             // already exists / would overwrite data
  kBusy = 7,               // in use (open mapping, concurrent operation)
  kKeyUnavailable = 8,     // provider cannot produce the KEK
  kInvalidVolume = 9,      // not a vcrypt volume, bad/unknown token, bad header
  kNoDeviceMapper = 10,    // the kernel has no device-mapper
  kIo = 11,                // I/O error on a device or state file
  kInvalidArgument = 12,   // a value is out of range / name not allowed
  kCrypto = 13,            // authentication failed (wrong key, tampered data)
};

// Name used in the JSON protocol, e.g. "not_found".
std::string_view ErrorCodeName(ErrorCode code);
// Inverse of ErrorCodeName; kInternal for unknown names.
ErrorCode ErrorCodeFromName(std::string_view name);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
};

inline Error MakeError(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { assert(!ok()); return std::get<1>(v_); }
  Error&& error() && { assert(!ok()); return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {}  // NOLINT
  static Status Ok() { return Status(); }

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { assert(!ok()); return *error_; }
  Error&& error() && { assert(!ok()); return std::move(*error_); }

 private:
  std::optional<Error> error_;
};

}  // namespace vcrypt

// Propagate an error from a Status/Result expression.
#define VCRYPT_RETURN_IF_ERROR(expr)                  \
  do {                                                \
    auto _vcrypt_st = (expr);                         \
    if (!_vcrypt_st.ok()) return std::move(_vcrypt_st).error(); \
  } while (0)

#define VCRYPT_CONCAT_INNER_(a, b) a##b
#define VCRYPT_CONCAT_(a, b) VCRYPT_CONCAT_INNER_(a, b)
// VCRYPT_ASSIGN_OR_RETURN(auto x, Foo()); declares x from Foo()'s value.
#define VCRYPT_ASSIGN_OR_RETURN(lhs, expr) \
  VCRYPT_ASSIGN_OR_RETURN_IMPL_(VCRYPT_CONCAT_(_vcrypt_r, __LINE__), lhs, expr)
#define VCRYPT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).error();       \
  lhs = std::move(tmp).value()

#endif  // VCRYPT_COMMON_RESULT_H_
