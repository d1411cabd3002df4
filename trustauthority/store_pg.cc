// The PostgreSQL connection of the Trust Authority's store
// (trustauthority/sql.h), through libpq.
#include <libpq-fe.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "common/handles.h"
#include "common/hex.h"
#include "trustauthority/sql.h"

namespace vcrypt::store_internal {
namespace {

// Every statement ends within this (a hung server or a lock held by a
// stuck replica must not hold a request's worker thread forever).
constexpr const char* kStatementTimeout = "10s";
constexpr const char* kDefaultConnectTimeout = "10";  // seconds
constexpr Oid kByteaOid = 17;

// libpq messages end with a newline and may span lines: the first line.
std::string FirstLine(const char* msg) {
  std::string s = msg != nullptr ? msg : "";
  s = s.substr(0, s.find('\n'));
  return s.empty() ? "unknown error" : s;
}

void IgnoreNotice(void*, const char*) {}

class PgConn final : public SqlConn {
 public:
  explicit PgConn(PgConnPtr conn) : conn_(std::move(conn)) {}
  Dialect dialect() const override { return Dialect::kPostgres; }

  // Session settings, again after every reconnect.
  Status Setup() {
    PQsetNoticeProcessor(conn_.get(), IgnoreNotice, nullptr);
    return ExecScript(std::string("SET statement_timeout = '") +
                      kStatementTimeout +
                      "'; SET client_min_messages = warning;");
  }

  Result<SqlResult> Exec(std::string_view sql,
                         const std::vector<SqlParam>& params) override {
    VCRYPT_RETURN_IF_ERROR(ReconnectIfBroken());
    auto r = ExecOnce(sql, params);
    // A connection that broke under a statement outside a transaction
    // (server restart, fail-over) is re-established once and the statement
    // sent again: it never ran, or ran and was committed on its own, and
    // every statement of ours outside a transaction is safe to repeat or
    // reports the repeat (single use: "already used").
    if (!r.ok() && !in_tx_ && PQstatus(conn_.get()) == CONNECTION_BAD) {
      VCRYPT_RETURN_IF_ERROR(ReconnectIfBroken());
      r = ExecOnce(sql, params);
    }
    return r;
  }

  Status ExecScript(std::string_view sql) override {
    const std::string text(sql);
    PgResultPtr res(PQexec(conn_.get(), text.c_str()));
    const ExecStatusType st = PQresultStatus(res.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
      return Fail(res.get()).error();
    return Status::Ok();
  }

  Status Begin() override {
    VCRYPT_RETURN_IF_ERROR(ReconnectIfBroken());
    VCRYPT_RETURN_IF_ERROR(ExecScript("BEGIN"));
    in_tx_ = true;
    return Status::Ok();
  }
  Status Commit() override {
    Status st = ExecScript("COMMIT");
    if (!st.ok()) Rollback();
    in_tx_ = false;
    return st;
  }
  void Rollback() override {
    if (PQtransactionStatus(conn_.get()) != PQTRANS_IDLE &&
        PQstatus(conn_.get()) == CONNECTION_OK)
      PgResultPtr(PQexec(conn_.get(), "ROLLBACK"));
    in_tx_ = false;
  }

 private:
  Status ReconnectIfBroken() {
    if (PQstatus(conn_.get()) != CONNECTION_BAD) return Status::Ok();
    if (in_tx_)
      return MakeError(ErrorCode::kIo,
                       "the database connection broke in a transaction");
    PQreset(conn_.get());
    if (PQstatus(conn_.get()) != CONNECTION_OK)
      return MakeError(ErrorCode::kIo,
                       "cannot reconnect to PostgreSQL: " +
                           FirstLine(PQerrorMessage(conn_.get())));
    return Setup();
  }

  Result<SqlResult> ExecOnce(std::string_view sql,
                             const std::vector<SqlParam>& params) {
    const std::string text(sql);
    std::vector<std::string> numbers;
    numbers.reserve(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    std::vector<int> lengths(params.size(), 0);
    std::vector<int> formats(params.size(), 0);
    for (size_t i = 0; i < params.size(); ++i) {
      const SqlParam& p = params[i];
      if (auto* v = std::get_if<int64_t>(&p)) {
        numbers.push_back(std::to_string(*v));
        values[i] = numbers.back().c_str();
      } else if (auto* s = std::get_if<std::string_view>(&p)) {
        // Text parameters are NUL-terminated strings to libpq: an embedded
        // NUL would silently cut the value.
        if (s->find('\0') != std::string_view::npos)
          return MakeError(ErrorCode::kInvalidArgument,
                           "a text value holds a NUL byte");
        numbers.emplace_back(*s);
        values[i] = numbers.back().c_str();
      } else if (auto* b = std::get_if<std::span<const uint8_t>>(&p)) {
        values[i] = reinterpret_cast<const char*>(b->data());
        lengths[i] = static_cast<int>(b->size());
        formats[i] = 1;  // binary: bytea's raw bytes
        if (b->empty()) values[i] = "";
      }
    }
    PgResultPtr res(PQexecParams(conn_.get(), text.c_str(),
                                 static_cast<int>(params.size()), nullptr,
                                 values.data(), lengths.data(), formats.data(),
                                 /*resultFormat=*/0));
    const ExecStatusType st = PQresultStatus(res.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return Fail(res.get());
    SqlResult out;
    const int rows = PQntuples(res.get());
    const int cols = PQnfields(res.get());
    for (int r = 0; r < rows; ++r) {
      std::vector<SqlCell> row(static_cast<size_t>(cols));
      for (int c = 0; c < cols; ++c) {
        SqlCell& cell = row[static_cast<size_t>(c)];
        if (PQgetisnull(res.get(), r, c)) continue;
        cell.null = false;
        const char* v = PQgetvalue(res.get(), r, c);
        const size_t len = static_cast<size_t>(PQgetlength(res.get(), r, c));
        if (PQftype(res.get(), c) == kByteaOid) {
          // Text format of bytea: "\x" and hex, decoded straight into
          // locked memory.
          if (len < 2 || v[0] != '\\' || v[1] != 'x' || len % 2 != 0)
            return MakeError(ErrorCode::kIo,
                             "PostgreSQL: unexpected bytea output format");
          cell.blob = SecureBuffer((len - 2) / 2);
          for (size_t i = 0; i < cell.blob.size(); ++i) {
            auto nib = [](char h) -> int {
              if (h >= '0' && h <= '9') return h - '0';
              if (h >= 'a' && h <= 'f') return h - 'a' + 10;
              if (h >= 'A' && h <= 'F') return h - 'A' + 10;
              return -1;
            };
            const int hi = nib(v[2 + 2 * i]), lo = nib(v[3 + 2 * i]);
            if (hi < 0 || lo < 0)
              return MakeError(ErrorCode::kIo,
                               "PostgreSQL: unexpected bytea output format");
            cell.blob.data()[i] = static_cast<uint8_t>(hi << 4 | lo);
          }
        } else {
          cell.text.assign(v, len);
        }
      }
      out.rows.push_back(std::move(row));
    }
    const char* n = PQcmdTuples(res.get());
    out.affected = (n != nullptr && *n != '\0') ? std::atoll(n) : 0;
    return out;
  }

  Result<SqlResult> Fail(const PGresult* res) {
    const char* state =
        res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    const std::string sqlstate = state != nullptr ? state : "";
    // The primary message only: DETAIL would repeat a conflicting key.
    const char* primary = res != nullptr
                              ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                              : nullptr;
    const std::string msg = primary != nullptr
                                ? std::string(primary)
                                : FirstLine(PQerrorMessage(conn_.get()));
    ErrorCode code = ErrorCode::kIo;
    if (sqlstate == "23505") {
      code = ErrorCode::kExists;  // unique_violation
    } else if (sqlstate == "57014" || sqlstate == "55P03" ||
               sqlstate == "40001" || sqlstate == "40P01") {
      code = ErrorCode::kBusy;  // timeout, lock, serialization, deadlock
    }
    return MakeError(code, "PostgreSQL: " + msg);
  }

  PgConnPtr conn_;
  bool in_tx_ = false;
};

}  // namespace

Status CheckConninfo(const std::string& conninfo) {
  char* err = nullptr;
  PgConninfoPtr opts(PQconninfoParse(conninfo.c_str(), &err));
  PgCharPtr err_owner(err);
  if (!opts)
    return MakeError(ErrorCode::kInvalidArgument,
                     "bad PostgreSQL connection string: " +
                         FirstLine(err != nullptr ? err : "out of memory"));
  for (const PQconninfoOption* o = opts.get(); o->keyword != nullptr; ++o)
    if (std::strcmp(o->keyword, "password") == 0 && o->val != nullptr &&
        o->val[0] != '\0')
      return MakeError(ErrorCode::kInvalidArgument,
                       "the database URL holds a password, which would show "
                       "in the process list: put it in ~/.pgpass, a "
                       "PGPASSFILE or a pg_service.conf service instead "
                       "(or use peer or TLS client certificate "
                       "authentication)");
  return Status::Ok();
}

Result<std::unique_ptr<SqlConn>> OpenPostgres(const std::string& conninfo) {
  VCRYPT_RETURN_IF_ERROR(CheckConninfo(conninfo));
  // Defaults first: the expanded connection string overrides them.
  const char* keys[] = {"connect_timeout", "application_name", "dbname",
                        nullptr};
  const char* vals[] = {kDefaultConnectTimeout, "vcrypt-ta", conninfo.c_str(),
                        nullptr};
  PgConnPtr conn(PQconnectdbParams(keys, vals, /*expand_dbname=*/1));
  if (!conn)
    return MakeError(ErrorCode::kIo, "cannot connect to PostgreSQL: no memory");
  if (PQstatus(conn.get()) != CONNECTION_OK)
    return MakeError(ErrorCode::kIo, "cannot connect to PostgreSQL: " +
                                         FirstLine(PQerrorMessage(conn.get())));
  auto pg = std::make_unique<PgConn>(std::move(conn));
  VCRYPT_RETURN_IF_ERROR(pg->Setup());
  return std::unique_ptr<SqlConn>(std::move(pg));
}

}  // namespace vcrypt::store_internal
