// TaStore over either database (trustauthority/store.h): the queries and
// migrations once, the connections in store_sqlite.cc and store_pg.cc.
#include "trustauthority/store.h"

#include <openssl/sha.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>

#include "common/hex.h"
#include "common/random.h"
#include "trustauthority/sql.h"

namespace vcrypt {
namespace {

using store_internal::Dialect;
using store_internal::SqlCell;
using store_internal::SqlConn;
using store_internal::SqlParam;
using store_internal::SqlResult;

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// --- migrations -------------------------------------------------------------
//
// Append only: a released migration never changes. Each runs in one
// transaction together with its schema_migrations row. "{BLOB}" is the
// dialect's byte-string type (the one difference so far); anything else
// that differs gets its own text per dialect here.
struct Migration {
  int version;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE hosts (
  name TEXT PRIMARY KEY,
  registration TEXT NOT NULL,
  ek TEXT,
  pinned_ek TEXT,
  pinned_at BIGINT,
  enrolled_ek TEXT,
  enrolled_ak TEXT,
  enrolled_at BIGINT,
  last_clock TEXT
);
CREATE TABLE enrollments (
  id TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  expires BIGINT NOT NULL
);
CREATE TABLE baselines (
  name TEXT PRIMARY KEY,
  body TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT
);
CREATE TABLE tpm_cas (
  id TEXT PRIMARY KEY,
  pem TEXT NOT NULL,
  added_at BIGINT NOT NULL
);
CREATE TABLE used_ids (
  kind TEXT NOT NULL,
  id TEXT NOT NULL,
  expires BIGINT NOT NULL,
  PRIMARY KEY (kind, id)
);
CREATE INDEX used_ids_expires ON used_ids (expires);
CREATE TABLE secrets (
  name TEXT PRIMARY KEY,
  value {BLOB} NOT NULL
);
CREATE TABLE signing_keys (
  kid TEXT PRIMARY KEY,
  private_key {BLOB} NOT NULL,
  public_key TEXT NOT NULL,
  state TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  retired_at BIGINT
);
)sql"},
};

static_assert(std::size(kMigrations) == kTaSchemaVersion,
              "kTaSchemaVersion is the last migration's number");

std::string MigrationSql(const Migration& m, Dialect d) {
  std::string s = m.sql;
  const std::string blob = d == Dialect::kSqlite ? "BLOB" : "BYTEA";
  for (size_t pos; (pos = s.find("{BLOB}")) != std::string::npos;)
    s.replace(pos, 6, blob);
  return s;
}

// PostgreSQL: one lock id for "migrating the vcrypt-ta schema".
constexpr int64_t kMigrationLock = 0x7663727970747461;  // "vcryptta"

Status ToStatus(Result<SqlResult> r) {
  if (!r.ok()) return std::move(r).error();
  return Status::Ok();
}

Result<int64_t> Int(const SqlCell& c) {
  if (c.null) return int64_t{0};
  try {
    size_t used = 0;
    int64_t v = std::stoll(c.text, &used);
    if (used == c.text.size()) return v;
  } catch (const std::exception&) {
  }
  return MakeError(ErrorCode::kIo, "the database holds a malformed number");
}

std::optional<std::string> Opt(const SqlCell& c) {
  if (c.null) return std::nullopt;
  return c.text;
}

SqlParam OptParam(const std::optional<std::string>& s) {
  if (!s) return nullptr;
  return std::string_view(*s);
}

Status Migrate(SqlConn& c, const std::string& url) {
  for (;;) {
    VCRYPT_RETURN_IF_ERROR(c.Begin());
    auto fail = [&](Error e) -> Status {
      c.Rollback();
      return e;
    };
    if (c.dialect() == Dialect::kPostgres) {
      auto lock = c.Exec("SELECT pg_advisory_xact_lock($1)",
                         {SqlParam(kMigrationLock)});
      if (!lock.ok()) return fail(std::move(lock).error());
    }
    if (Status st = c.ExecScript(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)");
        !st.ok())
      return fail(std::move(st).error());
    auto r = c.Exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
    if (!r.ok()) return fail(std::move(r).error());
    auto v = Int(r->rows.at(0).at(0));
    if (!v.ok()) return fail(std::move(v).error());
    if (*v > kTaSchemaVersion)
      return fail(MakeError(ErrorCode::kInvalidArgument,
                            "the database " + url + " has schema version " +
                                std::to_string(*v) +
                                ", newer than this vcrypt-ta knows (" +
                                std::to_string(kTaSchemaVersion) +
                                "): run the newer vcrypt-ta that wrote it"));
    if (*v == kTaSchemaVersion) return c.Commit();
    const Migration& m = kMigrations[*v];
    if (Status st = c.ExecScript(MigrationSql(m, c.dialect())); !st.ok())
      return fail(MakeError(st.error().code, "schema migration " +
                                                 std::to_string(m.version) +
                                                 ": " + st.error().message));
    auto ins = c.Exec(
        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
        {SqlParam(int64_t{m.version}), SqlParam(Now())});
    if (!ins.ok()) return fail(std::move(ins).error());
    VCRYPT_RETURN_IF_ERROR(c.Commit());
  }
}

// --- the connection pool
// ------------------------------------------------------

class Pool {
 public:
  using Opener = std::function<Result<std::unique_ptr<SqlConn>>()>;
  Pool(Opener open, size_t max) : open_(std::move(open)), max_(max) {}

  // A connection for one caller; given back when the lease ends.
  class Lease {
   public:
    Lease(Pool* p, std::unique_ptr<SqlConn> c)
        : pool_(p), conn_(std::move(c)) {}
    Lease(Lease&& o) noexcept = default;
    ~Lease() {
      if (conn_) pool_->Return(std::move(conn_));
    }
    SqlConn& operator*() { return *conn_; }
    SqlConn* operator->() { return conn_.get(); }

   private:
    Pool* pool_;
    std::unique_ptr<SqlConn> conn_;
  };

  Result<Lease> Acquire() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !idle_.empty() || open_count_ < max_; });
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(c));
    }
    ++open_count_;
    lock.unlock();
    auto c = open_();
    if (!c.ok()) {
      std::lock_guard relock(mu_);
      --open_count_;
      cv_.notify_one();
      return std::move(c).error();
    }
    return Lease(this, std::move(c).value());
  }

  void Give(std::unique_ptr<SqlConn> c) {
    std::lock_guard lock(mu_);
    ++open_count_;
    idle_.push_back(std::move(c));
  }

 private:
  void Return(std::unique_ptr<SqlConn> c) {
    {
      std::lock_guard lock(mu_);
      idle_.push_back(std::move(c));
    }
    cv_.notify_one();
  }

  Opener open_;
  size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<SqlConn>> idle_;
  size_t open_count_ = 0;
};

// --- the store
// ------------------------------------------------------------------

constexpr const char* kHostColumns =
    "name, registration, ek, pinned_ek, pinned_at, enrolled_ek, enrolled_ak, "
    "enrolled_at, last_clock";

Result<HostRow> HostFrom(const std::vector<SqlCell>& r) {
  HostRow h;
  h.name = r.at(0).text;
  h.registration = r.at(1).text;
  h.ek = Opt(r.at(2));
  h.pinned_ek = Opt(r.at(3));
  VCRYPT_ASSIGN_OR_RETURN(h.pinned_at, Int(r.at(4)));
  h.enrolled_ek = Opt(r.at(5));
  h.enrolled_ak = Opt(r.at(6));
  VCRYPT_ASSIGN_OR_RETURN(h.enrolled_at, Int(r.at(7)));
  h.last_clock = Opt(r.at(8));
  return h;
}

Result<BaselineRow> BaselineFrom(const std::vector<SqlCell>& r) {
  BaselineRow b;
  b.name = r.at(0).text;
  b.body = r.at(1).text;
  VCRYPT_ASSIGN_OR_RETURN(b.created_at, Int(r.at(2)));
  if (!r.at(3).null) {
    VCRYPT_ASSIGN_OR_RETURN(int64_t e, Int(r.at(3)));
    b.expires_at = e;
  }
  return b;
}

std::string HexSha256(std::string_view data) {
  uint8_t md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(data.data()), data.size(), md);
  return HexEncode(std::span<const uint8_t>(md, sizeof md));
}

class SqlTaStore final : public TaStore {
 public:
  SqlTaStore(std::string url, Pool::Opener open, size_t max)
      : url_(std::move(url)), pool_(std::move(open), max) {}

  Pool& pool() { return pool_; }
  const std::string& url() const override { return url_; }

  Result<std::optional<std::string>> GetSetting(
      const std::string& key) override {
    VCRYPT_ASSIGN_OR_RETURN(SqlResult r,
                            Exec("SELECT value FROM settings WHERE key = $1",
                                 {std::string_view(key)}));
    if (r.rows.empty()) return std::optional<std::string>();
    return std::optional<std::string>(r.rows[0][0].text);
  }

  Status Initialise(const std::map<std::string, std::string>& settings,
                    const SigningKeyInfo& key,
                    std::span<const uint8_t> private_pem,
                    std::span<const uint8_t> nonce_key) override {
    return InTx([&](SqlConn& c) -> Status {
      auto r = c.Exec("SELECT 1 FROM settings WHERE key = 'pcrs'");
      if (!r.ok()) return std::move(r).error();
      if (!r->rows.empty())
        return MakeError(ErrorCode::kExists,
                         "the database " + url_ + " is already initialised");
      for (const auto& [k, v] : settings) {
        auto s = c.Exec("INSERT INTO settings (key, value) VALUES ($1, $2)",
                        {std::string_view(k), std::string_view(v)});
        if (!s.ok()) return std::move(s).error();
      }
      auto n =
          c.Exec("INSERT INTO secrets (name, value) VALUES ('nonce_key', $1)",
                 {nonce_key});
      if (!n.ok()) return std::move(n).error();
      return InsertSigningKey(c, key, private_pem);
    });
  }

  Result<SecureBuffer> NonceKey(size_t size) override {
    for (int attempt = 0; attempt < 2; ++attempt) {
      VCRYPT_ASSIGN_OR_RETURN(
          SqlResult r,
          Exec("SELECT value FROM secrets WHERE name = 'nonce_key'"));
      if (!r.rows.empty()) {
        SecureBuffer key = std::move(r.rows[0][0].blob);
        if (key.size() != size)
          return MakeError(ErrorCode::kIo,
                           "the nonce key in " + url_ + " is not " +
                               std::to_string(size) + " bytes (damaged state)");
        return key;
      }
      VCRYPT_ASSIGN_OR_RETURN(SecureBuffer fresh, RandomKey(size));
      // First wins, on any replica; everyone then reads that one.
      VCRYPT_RETURN_IF_ERROR(
          Run("INSERT INTO secrets (name, value) VALUES ('nonce_key', $1) "
              "ON CONFLICT DO NOTHING",
              {fresh.span()}));
    }
    return MakeError(ErrorCode::kIo, "cannot read the nonce key in " + url_);
  }

  Status PutNonceKey(std::span<const uint8_t> key) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("INSERT INTO secrets (name, value) VALUES ('nonce_key', $1) "
             "ON CONFLICT DO NOTHING",
             {key}));
    if (r.affected != 1)
      return MakeError(ErrorCode::kExists,
                       "the database " + url_ + " has a nonce key already");
    return Status::Ok();
  }

  Status AddSigningKey(const SigningKeyInfo& key,
                       std::span<const uint8_t> private_pem) override {
    VCRYPT_ASSIGN_OR_RETURN(auto lease, pool_.Acquire());
    return InsertSigningKey(*lease, key, private_pem);
  }

  Result<std::vector<SigningKeyInfo>> SigningKeys() override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("SELECT kid, public_key, state, created_at, retired_at "
             "FROM signing_keys ORDER BY created_at, kid"));
    std::vector<SigningKeyInfo> out;
    for (auto& row : r.rows) {
      SigningKeyInfo k;
      k.kid = row[0].text;
      k.public_pem = row[1].text;
      k.state = row[2].text;
      VCRYPT_ASSIGN_OR_RETURN(k.created_at, Int(row[3]));
      if (!row[4].null) {
        VCRYPT_ASSIGN_OR_RETURN(int64_t t, Int(row[4]));
        k.retired_at = t;
      }
      out.push_back(std::move(k));
    }
    return out;
  }

  Result<SecureBuffer> SigningKeyPrivate(const std::string& kid) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r, Exec("SELECT private_key FROM signing_keys WHERE kid = $1",
                          {std::string_view(kid)}));
    if (r.rows.empty())
      return MakeError(ErrorCode::kNotFound,
                       "no signing key '" + kid + "' in " + url_);
    return std::move(r.rows[0][0].blob);
  }

  Status AddHost(const HostRow& h) override {
    auto r = Exec(std::string("INSERT INTO hosts (") + kHostColumns +
                      ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                  {std::string_view(h.name), std::string_view(h.registration),
                   OptParam(h.ek), OptParam(h.pinned_ek),
                   h.pinned_ek ? SqlParam(h.pinned_at) : SqlParam(nullptr),
                   OptParam(h.enrolled_ek), OptParam(h.enrolled_ak),
                   h.enrolled_ak ? SqlParam(h.enrolled_at) : SqlParam(nullptr),
                   OptParam(h.last_clock)});
    if (!r.ok() && r.error().code == ErrorCode::kExists)
      return MakeError(ErrorCode::kExists,
                       "host '" + h.name + "' is already registered");
    return ToStatus(std::move(r));
  }

  Result<std::optional<HostRow>> GetHost(const std::string& name) override {
    VCRYPT_ASSIGN_OR_RETURN(SqlResult r,
                            Exec(std::string("SELECT ") + kHostColumns +
                                     " FROM hosts WHERE name = $1",
                                 {std::string_view(name)}));
    if (r.rows.empty()) return std::optional<HostRow>();
    VCRYPT_ASSIGN_OR_RETURN(HostRow h, HostFrom(r.rows[0]));
    return std::optional<HostRow>(std::move(h));
  }

  Result<std::vector<HostRow>> ListHosts() override {
    VCRYPT_ASSIGN_OR_RETURN(SqlResult r,
                            Exec(std::string("SELECT ") + kHostColumns +
                                 " FROM hosts ORDER BY name"));
    std::vector<HostRow> out;
    for (const auto& row : r.rows) {
      VCRYPT_ASSIGN_OR_RETURN(HostRow h, HostFrom(row));
      out.push_back(std::move(h));
    }
    return out;
  }

  Result<bool> RemoveHost(const std::string& name) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("DELETE FROM hosts WHERE name = $1", {std::string_view(name)}));
    return r.affected > 0;
  }

  Result<std::string> PinEk(const std::string& name,
                            const std::string& registration,
                            const std::string& ek, int64_t at) override {
    // The row lock (PostgreSQL) or the database lock (SQLite) orders
    // concurrent pins; "IS NULL" makes all but the first change nothing.
    VCRYPT_RETURN_IF_ERROR(
        Run("UPDATE hosts SET pinned_ek = $3, pinned_at = $4 "
            "WHERE name = $1 AND registration = $2 AND pinned_ek IS NULL",
            {std::string_view(name), std::string_view(registration),
             std::string_view(ek), SqlParam(at)}));
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("SELECT pinned_ek FROM hosts WHERE name = $1 AND "
             "registration = $2",
             {std::string_view(name), std::string_view(registration)}));
    if (r.rows.empty() || r.rows[0][0].null)
      return MakeError(ErrorCode::kNotFound,
                       "host '" + name + "' was removed meanwhile");
    return r.rows[0][0].text;
  }

  Result<bool> SetEnrolled(const std::string& name,
                           const std::string& registration,
                           const std::string& ek, const std::string& ak,
                           int64_t at) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("UPDATE hosts SET enrolled_ek = $3, enrolled_ak = $4, "
             "enrolled_at = $5, last_clock = NULL "
             "WHERE name = $1 AND registration = $2",
             {std::string_view(name), std::string_view(registration),
              std::string_view(ek), std::string_view(ak), SqlParam(at)}));
    return r.affected > 0;
  }

  Status SetLastClock(const std::string& name, const std::string& ak,
                      const std::string& clock_json) override {
    return Run(
        "UPDATE hosts SET last_clock = $3 "
        "WHERE name = $1 AND enrolled_ak = $2",
        {std::string_view(name), std::string_view(ak),
         std::string_view(clock_json)});
  }

  Status PutEnrollment(const std::string& id, const std::string& body,
                       int64_t expires) override {
    return Run(
        "INSERT INTO enrollments (id, body, expires) "
        "VALUES ($1, $2, $3)",
        {std::string_view(id), std::string_view(body), SqlParam(expires)});
  }

  Result<std::optional<std::string>> TakeEnrollment(
      const std::string& id) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("DELETE FROM enrollments WHERE id = $1 RETURNING body",
             {std::string_view(id)}));
    if (r.rows.empty()) return std::optional<std::string>();
    return std::optional<std::string>(r.rows[0][0].text);
  }

  Result<std::vector<int64_t>> EnrollmentExpiries(int64_t now) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r, Exec("SELECT expires FROM enrollments WHERE expires >= $1",
                          {SqlParam(now)}));
    std::vector<int64_t> out;
    for (const auto& row : r.rows) {
      VCRYPT_ASSIGN_OR_RETURN(int64_t e, Int(row[0]));
      out.push_back(e);
    }
    return out;
  }

  Status PutBaseline(const BaselineRow& b, bool replace, int64_t now) override {
    return InTx([&](SqlConn& c) -> Status {
      // An expired row of that name is gone for every reader already.
      auto d = c.Exec(
          "DELETE FROM baselines WHERE name = $1 AND expires_at IS NOT NULL "
          "AND expires_at <= $2",
          {std::string_view(b.name), SqlParam(now)});
      if (!d.ok()) return std::move(d).error();
      const std::string sql =
          std::string(
              "INSERT INTO baselines (name, body, created_at, expires_at) "
              "VALUES ($1, $2, $3, $4)") +
          (replace ? " ON CONFLICT (name) DO UPDATE SET body = excluded.body, "
                     "created_at = excluded.created_at, "
                     "expires_at = excluded.expires_at"
                   : "");
      auto r = c.Exec(
          sql, {std::string_view(b.name), std::string_view(b.body),
                SqlParam(b.created_at),
                b.expires_at ? SqlParam(*b.expires_at) : SqlParam(nullptr)});
      if (!r.ok() && r.error().code == ErrorCode::kExists)
        return MakeError(ErrorCode::kExists,
                         "baseline '" + b.name + "' already exists");
      return ToStatus(std::move(r));
    });
  }

  Result<std::optional<BaselineRow>> GetBaseline(const std::string& name,
                                                 int64_t now) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("SELECT name, body, created_at, expires_at FROM baselines "
             "WHERE name = $1 AND (expires_at IS NULL OR expires_at > $2)",
             {std::string_view(name), SqlParam(now)}));
    if (r.rows.empty()) return std::optional<BaselineRow>();
    VCRYPT_ASSIGN_OR_RETURN(BaselineRow b, BaselineFrom(r.rows[0]));
    return std::optional<BaselineRow>(std::move(b));
  }

  Result<std::vector<BaselineRow>> ListBaselines(int64_t now) override {
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("SELECT name, body, created_at, expires_at FROM baselines "
             "WHERE expires_at IS NULL OR expires_at > $1 ORDER BY name",
             {SqlParam(now)}));
    std::vector<BaselineRow> out;
    for (const auto& row : r.rows) {
      VCRYPT_ASSIGN_OR_RETURN(BaselineRow b, BaselineFrom(row));
      out.push_back(std::move(b));
    }
    return out;
  }

  Result<bool> RemoveBaseline(const std::string& name) override {
    VCRYPT_ASSIGN_OR_RETURN(SqlResult r,
                            Exec("DELETE FROM baselines WHERE name = $1",
                                 {std::string_view(name)}));
    return r.affected > 0;
  }

  Status AddTpmCa(const TpmCaRow& ca, int64_t at) override {
    return Run(
        "INSERT INTO tpm_cas (id, pem, added_at) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING",
        {std::string_view(ca.id), std::string_view(ca.pem), SqlParam(at)});
  }

  Result<std::vector<TpmCaRow>> ListTpmCas() override {
    VCRYPT_ASSIGN_OR_RETURN(SqlResult r,
                            Exec("SELECT id, pem FROM tpm_cas ORDER BY id"));
    std::vector<TpmCaRow> out;
    for (auto& row : r.rows)
      out.push_back({std::move(row[0].text), std::move(row[1].text)});
    return out;
  }

  Result<bool> ConsumeOnce(std::string_view kind, std::string_view id,
                           int64_t expires) override {
    if (id.empty() || kind.empty())
      return MakeError(ErrorCode::kInvalidArgument, "empty single-use id");
    // The primary key is the guard: of any number of concurrent inserts
    // of one id, on any replica, exactly one inserts a row.
    const std::string hashed = HexSha256(id);
    VCRYPT_ASSIGN_OR_RETURN(
        SqlResult r,
        Exec("INSERT INTO used_ids (kind, id, expires) VALUES ($1, $2, $3) "
             "ON CONFLICT DO NOTHING",
             {kind, std::string_view(hashed), SqlParam(expires)}));
    return r.affected == 1;
  }

  Status Purge(int64_t now, int64_t grace) override {
    const int64_t cutoff = now - grace;
    VCRYPT_RETURN_IF_ERROR(
        Run("DELETE FROM used_ids WHERE expires < $1", {SqlParam(cutoff)}));
    VCRYPT_RETURN_IF_ERROR(
        Run("DELETE FROM enrollments WHERE expires < $1", {SqlParam(cutoff)}));
    return Run(
        "DELETE FROM baselines WHERE expires_at IS NOT NULL AND "
        "expires_at <= $1",
        {SqlParam(now)});
  }

 private:
  Result<SqlResult> Exec(const std::string& sql,
                         const std::vector<SqlParam>& params = {}) {
    VCRYPT_ASSIGN_OR_RETURN(auto lease, pool_.Acquire());
    return lease->Exec(sql, params);
  }

  Status Run(const std::string& sql, const std::vector<SqlParam>& params = {}) {
    return ToStatus(Exec(sql, params));
  }

  Status InTx(const std::function<Status(SqlConn&)>& body) {
    VCRYPT_ASSIGN_OR_RETURN(auto lease, pool_.Acquire());
    VCRYPT_RETURN_IF_ERROR(lease->Begin());
    Status st = body(*lease);
    if (!st.ok()) {
      lease->Rollback();
      return st;
    }
    return lease->Commit();
  }

  static Status InsertSigningKey(SqlConn& c, const SigningKeyInfo& key,
                                 std::span<const uint8_t> private_pem) {
    auto r = c.Exec(
        "INSERT INTO signing_keys (kid, private_key, public_key, state, "
        "created_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6)",
        {std::string_view(key.kid), private_pem,
         std::string_view(key.public_pem), std::string_view(key.state),
         SqlParam(key.created_at),
         key.retired_at ? SqlParam(*key.retired_at) : SqlParam(nullptr)});
    return ToStatus(std::move(r));
  }

  std::string url_;
  Pool pool_;
};

}  // namespace

bool IsPostgresUrl(std::string_view url) {
  return url.starts_with("postgresql://") || url.starts_with("postgres://") ||
         (!url.starts_with("sqlite:") &&
          url.find('=') != std::string_view::npos);
}

Status CheckStoreUrl(const std::string& url) {
  if (url.starts_with("sqlite:")) {
    if (url.size() == 7)
      return MakeError(ErrorCode::kInvalidArgument,
                       "the database URL sqlite: needs a file path");
    return Status::Ok();
  }
  if (IsPostgresUrl(url)) return store_internal::CheckConninfo(url);
  // Not echoed: it might hold a secret in a form we do not parse.
  return MakeError(ErrorCode::kInvalidArgument,
                   "unknown database URL form (use sqlite:PATH, "
                   "postgresql://HOST/DB or a libpq 'key=value' string)");
}

std::string DefaultStoreUrl(const std::string& state_dir) {
  return "sqlite:" + state_dir + "/ta.db";
}

Result<std::shared_ptr<TaStore>> OpenTaStore(const std::string& url) {
  VCRYPT_RETURN_IF_ERROR(CheckStoreUrl(url));
  Pool::Opener open;
  // A few statements in flight at once; the HTTP workers queue for a
  // connection (each statement is short: bounded by statement_timeout or
  // SQLite's busy timeout). A request waiting on a lock (an admin's
  // write, a hung server) holds one connection, not the service.
  const size_t max = 4;
  if (IsPostgresUrl(url)) {
    open = [url] { return store_internal::OpenPostgres(url); };
  } else {
    // WAL: readers go on while one connection writes; writers take turns
    // (BEGIN IMMEDIATE, busy timeout), in this process and others.
    const std::string path = url.substr(7);
    open = [path] { return store_internal::OpenSqlite(path); };
  }
  auto store = std::make_shared<SqlTaStore>(url, open, max);
  VCRYPT_ASSIGN_OR_RETURN(std::unique_ptr<SqlConn> first, open());
  VCRYPT_RETURN_IF_ERROR(Migrate(*first, url));
  store->pool().Give(std::move(first));
  return std::shared_ptr<TaStore>(std::move(store));
}

}  // namespace vcrypt
