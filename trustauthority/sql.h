// The Trust Authority store's connection layer (trustauthority/store.h is
// the interface; this is for store*.cc only): one SQL connection to SQLite
// or PostgreSQL behind one small class, so that the store's queries are
// written once.
//
// SQL text uses PostgreSQL's $1..$n placeholders (the SQLite connection
// rewrites them to ?1..?n); every value from outside is a bound parameter.
// Results come back as text, except BLOB/BYTEA columns, which come back
// in a SecureBuffer (they hold key material).
#ifndef VCRYPT_TRUSTAUTHORITY_SQL_H_
#define VCRYPT_TRUSTAUTHORITY_SQL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt::store_internal {

enum class Dialect { kSqlite, kPostgres };

// A bound parameter: NULL, an integer, text, or bytes (BLOB/BYTEA). Views:
// the caller keeps the data alive for the call.
using SqlParam = std::variant<std::nullptr_t, int64_t, std::string_view,
                              std::span<const uint8_t>>;

struct SqlCell {
  bool null = true;
  std::string text;   // every non-NULL column but BLOB/BYTEA
  SecureBuffer blob;  // BLOB/BYTEA columns
};

struct SqlResult {
  std::vector<std::vector<SqlCell>> rows;
  int64_t affected = 0;  // rows an INSERT/UPDATE/DELETE changed
};

// Not thread-safe: one thread at a time (the store's pool hands it out).
// Errors: kExists for a uniqueness violation, kBusy for a lock or
// statement timeout, kIo for everything else (one line, never a
// parameter's value).
class SqlConn {
 public:
  virtual ~SqlConn() = default;
  virtual Dialect dialect() const = 0;
  // One statement.
  virtual Result<SqlResult> Exec(std::string_view sql,
                                 const std::vector<SqlParam>& params = {}) = 0;
  // Several statements without parameters (migrations).
  virtual Status ExecScript(std::string_view sql) = 0;
  // A write transaction: SQLite takes its write lock at once (BEGIN
  // IMMEDIATE), so that two processes never deadlock upgrading a read.
  // Outside a transaction a PostgreSQL connection found broken is
  // re-established once before the statement.
  virtual Status Begin() = 0;
  virtual Status Commit() = 0;
  virtual void Rollback() = 0;  // best effort; no-op outside a transaction
};

// `path`: the database file, made owner-only (0600) when missing; WAL mode,
// synchronous=FULL, a busy timeout, secure_delete.
Result<std::unique_ptr<SqlConn>> OpenSqlite(const std::string& path);
// `conninfo`: a libpq URI or key=value string without a password
// (CheckConninfo). connect_timeout 10 s unless it names one; every
// statement bounded by statement_timeout.
Result<std::unique_ptr<SqlConn>> OpenPostgres(const std::string& conninfo);
// kInvalidArgument when libpq cannot parse `conninfo` or it carries a
// password (which would be in argv and the process list).
Status CheckConninfo(const std::string& conninfo);

}  // namespace vcrypt::store_internal

#endif  // VCRYPT_TRUSTAUTHORITY_SQL_H_
