// The SQLite connection of the Trust Authority's store (trustauthority/sql.h).
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "common/handles.h"
#include "trustauthority/sql.h"

namespace vcrypt::store_internal {
namespace {

// A writer waits this long for another process's write lock (an admin
// command while the service runs) before the request fails with kBusy.
constexpr int kBusyTimeoutMs = 5000;

// "$12" -> "?12": our SQL never has '$' outside a placeholder.
std::string ToSqlite(std::string_view sql) {
  std::string out(sql);
  for (char& c : out)
    if (c == '$') c = '?';
  return out;
}

class SqliteConn final : public SqlConn {
 public:
  SqliteConn(SqlitePtr db, std::string path)
      : db_(std::move(db)), path_(std::move(path)) {}
  Dialect dialect() const override { return Dialect::kSqlite; }

  Result<SqlResult> Exec(std::string_view sql,
                         const std::vector<SqlParam>& params) override {
    const std::string text = ToSqlite(sql);
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_.get(), text.c_str(),
                                static_cast<int>(text.size()), &raw, nullptr);
    SqliteStmtPtr stmt(raw);
    if (rc != SQLITE_OK) return Fail(rc);
    for (size_t i = 0; i < params.size(); ++i) {
      const int n = static_cast<int>(i + 1);
      const SqlParam& p = params[i];
      if (std::holds_alternative<std::nullptr_t>(p)) {
        rc = sqlite3_bind_null(stmt.get(), n);
      } else if (auto* v = std::get_if<int64_t>(&p)) {
        rc = sqlite3_bind_int64(stmt.get(), n, *v);
      } else if (auto* s = std::get_if<std::string_view>(&p)) {
        rc = sqlite3_bind_text(stmt.get(), n, s->data(),
                               static_cast<int>(s->size()), SQLITE_TRANSIENT);
      } else {
        auto b = std::get<std::span<const uint8_t>>(p);
        rc = sqlite3_bind_blob(stmt.get(), n, b.data(),
                               static_cast<int>(b.size()), SQLITE_TRANSIENT);
      }
      if (rc != SQLITE_OK) return Fail(rc);
    }
    SqlResult out;
    for (;;) {
      rc = sqlite3_step(stmt.get());
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) return Fail(rc);
      const int cols = sqlite3_column_count(stmt.get());
      std::vector<SqlCell> row(static_cast<size_t>(cols));
      for (int c = 0; c < cols; ++c) {
        SqlCell& cell = row[static_cast<size_t>(c)];
        const int type = sqlite3_column_type(stmt.get(), c);
        if (type == SQLITE_NULL) continue;
        cell.null = false;
        if (type == SQLITE_BLOB) {
          const auto* b =
              static_cast<const uint8_t*>(sqlite3_column_blob(stmt.get(), c));
          const int len = sqlite3_column_bytes(stmt.get(), c);
          cell.blob = SecureBuffer::CopyOf(
              std::span<const uint8_t>(b, static_cast<size_t>(len)));
        } else {
          const auto* t =
              reinterpret_cast<const char*>(sqlite3_column_text(stmt.get(), c));
          const int len = sqlite3_column_bytes(stmt.get(), c);
          cell.text.assign(t, static_cast<size_t>(len));
        }
      }
      out.rows.push_back(std::move(row));
    }
    out.affected = sqlite3_changes64(db_.get());
    return out;
  }

  Status ExecScript(std::string_view sql) override {
    const std::string text(sql);
    const int rc =
        sqlite3_exec(db_.get(), text.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return Fail(rc).error();
    return Status::Ok();
  }

  Status Begin() override {
    auto r = Exec("BEGIN IMMEDIATE", {});
    if (!r.ok()) return std::move(r).error();
    return Status::Ok();
  }
  Status Commit() override {
    auto r = Exec("COMMIT", {});
    if (!r.ok()) {
      Rollback();
      return std::move(r).error();
    }
    return Status::Ok();
  }
  void Rollback() override {
    if (sqlite3_get_autocommit(db_.get()) == 0)
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }

 private:
  Result<SqlResult> Fail(int rc) const {
    const int primary = rc & 0xff;
    const ErrorCode code = primary == SQLITE_CONSTRAINT ? ErrorCode::kExists
                           : primary == SQLITE_BUSY || primary == SQLITE_LOCKED
                               ? ErrorCode::kBusy
                               : ErrorCode::kIo;
    return MakeError(code, "database " + path_ + ": " +
                               std::string(sqlite3_errmsg(db_.get())));
  }

  SqlitePtr db_;
  std::string path_;
};

}  // namespace

Result<std::unique_ptr<SqlConn>> OpenSqlite(const std::string& path) {
  // Made owner-only before SQLite sees it: SQLite would create it (and its
  // -wal and -shm files, which copy the database's mode and, for root, its
  // owner) with 0644. Root making it in a directory it does not own (an
  // admin command run as root) gives it to the directory's owner, the
  // services' user, as it did with the state files before.
  {
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (!fd.valid() && errno == ENOENT) {
      fd.reset(open(path.c_str(),
                    O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
      const int create_errno = fd.valid() ? 0 : errno;
      const std::string dir =
          path.find('/') == std::string::npos
              ? "."
              : path.substr(0, std::max<size_t>(path.rfind('/'), 1));
      struct stat dst;
      if (fd.valid() && geteuid() == 0 && stat(dir.c_str(), &dst) == 0 &&
          dst.st_uid != 0 && fchown(fd.get(), dst.st_uid, dst.st_gid) != 0)
        return MakeError(ErrorCode::kIo, "cannot give the database " + path +
                                             " to its directory's owner: " +
                                             std::strerror(errno));
      // Another process made it between the two opens.
      if (create_errno == EEXIST)
        fd.reset(open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    }
    if (!fd.valid())
      return MakeError(
          errno == ENOENT   ? ErrorCode::kNotFound
          : errno == EACCES ? ErrorCode::kPermissionDenied
                            : ErrorCode::kIo,
          "cannot open the database " + path + ": " + std::strerror(errno));
    struct stat st;
    if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
      return MakeError(ErrorCode::kIo,
                       "the database " + path + " is not a regular file");
  }
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &raw,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW,
      nullptr);
  SqlitePtr db(raw);
  if (rc != SQLITE_OK)
    return MakeError(ErrorCode::kIo,
                     "cannot open the database " + path + ": " +
                         (db ? sqlite3_errmsg(db.get()) : sqlite3_errstr(rc)));
  sqlite3_busy_timeout(db.get(), kBusyTimeoutMs);
  sqlite3_extended_result_codes(db.get(), 1);
  auto conn = std::make_unique<SqliteConn>(std::move(db), path);
  // WAL: readers do not block the writer (services and admin commands in
  // several processes). synchronous=FULL: a committed use of a nonce or
  // jti survives a power loss (a lost one could be replayed).
  // secure_delete: deleted rows (enrollment secrets' digests, retired
  // keys) are overwritten in the file.
  auto wal = conn->Exec("PRAGMA journal_mode=WAL", {});
  if (!wal.ok()) return std::move(wal).error();
  if (wal->rows.empty() || wal->rows[0].empty() ||
      wal->rows[0][0].text != "wal")
    return MakeError(ErrorCode::kIo, "the database " + path +
                                         " cannot use write-ahead logging "
                                         "(a network file system?)");
  VCRYPT_RETURN_IF_ERROR(
      conn->ExecScript("PRAGMA synchronous=FULL; PRAGMA secure_delete=ON; "
                       "PRAGMA foreign_keys=ON;"));
  return std::unique_ptr<SqlConn>(std::move(conn));
}

}  // namespace vcrypt::store_internal
