// The Trust Authority's store (trustauthority/store.h), one conformance
// suite run against both databases: SQLite in a temporary directory and a
// real PostgreSQL server started by the test (tests/unit/pg_server.h).
// Single use under concurrency (threads, and processes as replicas are),
// the first EK wins, single-use enrollments, baselines with expiry,
// migrations. The replay guard tests of the file store live on here.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "tests/test_util.h"
#include "tests/unit/pg_server.h"
#include "trustauthority/sql.h"
#include "trustauthority/store.h"

namespace vcrypt {
namespace {

class TaStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "sqlite") {
      url_ = "sqlite:" + dir_.path() + "/ta.db";
    } else {
      ASSERT_NO_FATAL_FAILURE(testing::NeedPostgres(&url_));
      if (IsSkipped()) return;
    }
    store_ = Open();
    ASSERT_TRUE(store_);
  }
  // Another store on the same database: its own connections, as another
  // replica (or process) has.
  std::shared_ptr<TaStore> Open() {
    auto s = OpenTaStore(url_);
    EXPECT_TRUE(s.ok()) << s.error().message;
    return s.ok() ? std::move(s).value() : nullptr;
  }
  // A raw connection, to look at or damage what the store wrote.
  std::unique_ptr<store_internal::SqlConn> Raw() {
    auto c = GetParam() == "sqlite"
                 ? store_internal::OpenSqlite(dir_.path() + "/ta.db")
                 : store_internal::OpenPostgres(url_);
    EXPECT_TRUE(c.ok()) << c.error().message;
    return c.ok() ? std::move(c).value() : nullptr;
  }

  testing::TempDir dir_{"ta-store"};
  std::string url_;
  std::shared_ptr<TaStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Backends, TaStoreTest,
                         ::testing::Values("sqlite", "postgres"),
                         [](const auto& info) { return info.param; });

TEST_P(TaStoreTest, ConsumeOnceIsSingleUse) {
  auto first = store_->ConsumeOnce("jti", "jti-1", 2000);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE(*first);
  EXPECT_FALSE(*store_->ConsumeOnce("jti", "jti-1", 2000));
  // Another id, or the same id of another kind, is independent.
  EXPECT_TRUE(*store_->ConsumeOnce("jti", "jti-2", 2000));
  EXPECT_TRUE(*store_->ConsumeOnce("nonce", "jti-1", 2000));
  EXPECT_FALSE(store_->ConsumeOnce("jti", "", 2000).ok());
  // Hostile ids are only ever hashed into a bound parameter; the whole id
  // counts ("nul\0id" is not "nul"), however long.
  for (const std::string& id :
       {std::string("'); DROP TABLE used_ids; --"), std::string("../x"),
        std::string("nul\0id", 6), std::string(100000, 'x')}) {
    auto r = store_->ConsumeOnce("jti", id, 2000);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_TRUE(*r);
    EXPECT_FALSE(*store_->ConsumeOnce("jti", id, 2000));
  }
  EXPECT_TRUE(*store_->ConsumeOnce("jti", "nul", 2000));
}

TEST_P(TaStoreTest, ReplicasOnOneDatabaseSeeEachOther) {
  auto other = Open();
  ASSERT_TRUE(other);
  EXPECT_TRUE(*store_->ConsumeOnce("nonce", "n1", 2000));
  EXPECT_FALSE(*other->ConsumeOnce("nonce", "n1", 2000));
  EXPECT_TRUE(*other->ConsumeOnce("nonce", "n2", 2000));
  EXPECT_FALSE(*store_->ConsumeOnce("nonce", "n2", 2000));
  // The nonce MAC key is made once, whoever asks first.
  auto k1 = store_->NonceKey(32);
  auto k2 = other->NonceKey(32);
  ASSERT_TRUE(k1.ok() && k2.ok());
  EXPECT_TRUE(k1->Equals(*k2));
}

TEST_P(TaStoreTest, ConcurrentThreadsConsumeExactlyOnce) {
  std::vector<std::shared_ptr<TaStore>> stores = {store_, Open()};
  ASSERT_TRUE(stores[1]);
  for (int round = 0; round < 10; ++round) {
    const std::string id = "race-" + std::to_string(round);
    std::atomic<int> winners{0}, errors{0}, go{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 12; ++i) {
      threads.emplace_back([&, i] {
        ++go;
        while (go < 12) std::this_thread::yield();
        auto r = stores[i % 2]->ConsumeOnce("jti", id, 2000);
        if (!r.ok())
          ++errors;
        else if (*r)
          ++winners;
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(winners.load(), 1) << id;
    EXPECT_EQ(errors.load(), 0) << id;
  }
}

TEST_P(TaStoreTest, ConcurrentProcessesConsumeExactlyOnce) {
  constexpr int kProcs = 6;
  for (int round = 0; round < 3; ++round) {
    const std::string id = "proc-race-" + std::to_string(round);
    std::vector<pid_t> pids;
    for (int i = 0; i < kProcs; ++i) {
      pid_t pid = fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        // A store of its own per process, as separate replicas have.
        auto s = OpenTaStore(url_);
        if (!s.ok()) _exit(2);
        auto r = (*s)->ConsumeOnce("jti", id, 2000);
        _exit(!r.ok() ? 2 : *r ? 1 : 0);
      }
      pids.push_back(pid);
    }
    int winners = 0, errors = 0;
    for (pid_t pid : pids) {
      int status = 0;
      ASSERT_EQ(waitpid(pid, &status, 0), pid);
      ASSERT_TRUE(WIFEXITED(status));
      winners += WEXITSTATUS(status) == 1;
      errors += WEXITSTATUS(status) == 2;
    }
    EXPECT_EQ(winners, 1) << id;
    EXPECT_EQ(errors, 0) << id;
  }
}

TEST_P(TaStoreTest, PurgeRemovesOnlyWhatExpiredBeforeTheGrace) {
  ASSERT_TRUE(*store_->ConsumeOnce("jti", "old", 1000));
  ASSERT_TRUE(*store_->ConsumeOnce("jti", "new", 2000));
  ASSERT_TRUE(store_->PutEnrollment("e-old", "{}", 1000).ok());
  ASSERT_TRUE(store_->PutEnrollment("e-new", "{}", 2000).ok());
  // Within the grace after the expiry: kept.
  ASSERT_TRUE(store_->Purge(1059, 60).ok());
  EXPECT_FALSE(*store_->ConsumeOnce("jti", "old", 1000));
  EXPECT_EQ(store_->EnrollmentExpiries(0)->size(), 2u);
  // Past it: "old" goes (and could be consumed again), "new" stays.
  ASSERT_TRUE(store_->Purge(1061, 60).ok());
  EXPECT_FALSE(*store_->ConsumeOnce("jti", "new", 2000));
  EXPECT_TRUE(*store_->ConsumeOnce("jti", "old", 1000));
  EXPECT_EQ(*store_->EnrollmentExpiries(0), std::vector<int64_t>{2000});
}

TEST_P(TaStoreTest, TheFirstEkWinsAcrossReplicas) {
  HostRow h;
  h.name = "h1";
  h.registration = "reg1";
  ASSERT_TRUE(store_->AddHost(h).ok());
  EXPECT_EQ(store_->AddHost(h).error().code, ErrorCode::kExists);
  std::vector<std::shared_ptr<TaStore>> stores = {store_, Open()};
  ASSERT_TRUE(stores[1]);
  std::vector<std::string> got(8);
  std::atomic<int> go{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      ++go;
      while (go < 8) std::this_thread::yield();
      auto r = stores[i % 2]->PinEk("h1", "reg1", "ek-" + std::to_string(i),
                                    100 + i);
      got[i] = r.ok() ? *r : "error: " + r.error().message;
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> winners(got.begin(), got.end());
  ASSERT_EQ(winners.size(), 1u) << "two EKs pinned to one host";
  EXPECT_EQ(winners.begin()->rfind("ek-", 0), 0u) << *winners.begin();
  EXPECT_EQ((*store_->GetHost("h1"))->pinned_ek, *winners.begin());
  // Another registration of the name (removed, added again) starts over;
  // the old registration's pin is gone with its row.
  ASSERT_TRUE(*store_->RemoveHost("h1"));
  EXPECT_FALSE(*store_->RemoveHost("h1"));
  h.registration = "reg2";
  ASSERT_TRUE(store_->AddHost(h).ok());
  EXPECT_EQ(store_->PinEk("h1", "reg1", "ek-x", 1).error().code,
            ErrorCode::kNotFound);
  EXPECT_EQ(*store_->PinEk("h1", "reg2", "ek-y", 1), "ek-y");
  // Enrollment and the last clock follow the registration and the AK.
  EXPECT_FALSE(*store_->SetEnrolled("h1", "reg1", "ek-y", "ak", 5));
  EXPECT_TRUE(*store_->SetEnrolled("h1", "reg2", "ek-y", "ak", 5));
  ASSERT_TRUE(store_->SetLastClock("h1", "other-ak", "{\"x\":1}").ok());
  EXPECT_FALSE((*store_->GetHost("h1"))->last_clock.has_value());
  ASSERT_TRUE(store_->SetLastClock("h1", "ak", "{\"x\":2}").ok());
  EXPECT_EQ((*store_->GetHost("h1"))->last_clock, "{\"x\":2}");
  EXPECT_EQ((*store_->GetHost("h1"))->enrolled_ak, "ak");
}

TEST_P(TaStoreTest, AnEnrollmentIsTakenOnce) {
  ASSERT_TRUE(store_->PutEnrollment("id1", "{\"a\":1}", 2000).ok());
  EXPECT_EQ(store_->PutEnrollment("id1", "{}", 2000).error().code,
            ErrorCode::kExists);
  std::vector<std::shared_ptr<TaStore>> stores = {store_, Open()};
  std::atomic<int> taken{0}, errors{0}, go{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      ++go;
      while (go < 8) std::this_thread::yield();
      auto r = stores[i % 2]->TakeEnrollment("id1");
      if (!r.ok())
        ++errors;
      else if (r->has_value() && **r == "{\"a\":1}")
        ++taken;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(taken.load(), 1);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_FALSE(store_->TakeEnrollment("id1")->has_value());
}

TEST_P(TaStoreTest, BaselinesRoundTripAndExpire) {
  const int64_t now = 10000;
  // The body is opaque: another document kind round-trips byte for byte.
  const std::string values = R"({"values":["00ff"]})";
  const std::string policy = R"({"policy":{"any":[1,2]} , "x":"\u00e9"})";
  ASSERT_TRUE(store_->PutBaseline({"b1", values, now, {}}, false, now).ok());
  ASSERT_TRUE(
      store_->PutBaseline({"p1", policy, now, now + 100}, false, now).ok());
  EXPECT_EQ(store_->PutBaseline({"b1", "{}", now, {}}, false, now).error().code,
            ErrorCode::kExists);
  auto b1 = store_->GetBaseline("b1", now);
  ASSERT_TRUE(b1.ok() && b1->has_value());
  EXPECT_EQ((*b1)->body, values);
  EXPECT_EQ((*b1)->created_at, now);
  EXPECT_FALSE((*b1)->expires_at.has_value());
  auto p1 = store_->GetBaseline("p1", now);
  ASSERT_TRUE(p1.ok() && p1->has_value());
  EXPECT_EQ((*p1)->body, policy);
  EXPECT_EQ((*p1)->expires_at, now + 100);
  auto all = store_->ListBaselines(now);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].name, "b1");
  EXPECT_EQ((*all)[1].name, "p1");
  // Expired: ignored by every reader, and its name free again.
  EXPECT_FALSE(store_->GetBaseline("p1", now + 100)->has_value());
  EXPECT_EQ(store_->ListBaselines(now + 100)->size(), 1u);
  ASSERT_TRUE(
      store_->PutBaseline({"p1", "{}", now + 100, {}}, false, now + 100).ok());
  EXPECT_EQ((*store_->GetBaseline("p1", now + 200))->body, "{}");
  // Replace: staged entries overwrite.
  ASSERT_TRUE(
      store_->PutBaseline({"p1", policy, now, now + 500}, true, now).ok());
  EXPECT_EQ((*store_->GetBaseline("p1", now))->body, policy);
  // Purge removes the expired row for good.
  ASSERT_TRUE(store_->Purge(now + 500, 60).ok());
  EXPECT_FALSE(store_->GetBaseline("p1", 0)->has_value());
  EXPECT_TRUE(*store_->RemoveBaseline("b1"));
  EXPECT_FALSE(*store_->RemoveBaseline("b1"));
  EXPECT_TRUE(store_->ListBaselines(now)->empty());
}

TEST_P(TaStoreTest, SettingsKeysAndCas) {
  SigningKeyInfo k{"kid-1", "PUBLIC PEM", "active", 5, {}};
  const std::string priv("PRIVATE\nPEM\0bytes", 17);
  std::span<const uint8_t> priv_bytes(
      reinterpret_cast<const uint8_t*>(priv.data()), priv.size());
  std::vector<uint8_t> nk(32, 7);
  ASSERT_TRUE(
      store_->Initialise({{"pcrs", "sha256:0"}}, k, priv_bytes, nk).ok());
  EXPECT_EQ(store_->Initialise({{"pcrs", "sha256:1"}}, k, priv_bytes, nk)
                .error()
                .code,
            ErrorCode::kExists);
  EXPECT_EQ(*store_->GetSetting("pcrs"), "sha256:0");
  EXPECT_FALSE(store_->GetSetting("nope")->has_value());
  auto keys = store_->SigningKeys();
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].kid, "kid-1");
  EXPECT_EQ((*keys)[0].state, "active");
  auto back = store_->SigningKeyPrivate("kid-1");
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(std::string(back->chars(), back->size()), priv);
  EXPECT_EQ(store_->SigningKeyPrivate("kid-2").error().code,
            ErrorCode::kNotFound);
  ASSERT_TRUE(store_->AddTpmCa({"ca1", "PEM1"}, 1).ok());
  ASSERT_TRUE(store_->AddTpmCa({"ca1", "PEM1"}, 2).ok());  // no-op
  EXPECT_EQ(store_->ListTpmCas()->size(), 1u);
  // A nonce key set by an import is the one served; a second is refused.
  // The nonce key set by Initialise is the one served; a second refused.
  EXPECT_EQ(store_->PutNonceKey(nk).error().code, ErrorCode::kExists);
  EXPECT_TRUE(std::equal(nk.begin(), nk.end(), store_->NonceKey(32)->data()));
}

TEST_P(TaStoreTest, MigrationsAreVersionedAndANewerDatabaseIsRefused) {
  auto raw = Raw();
  ASSERT_TRUE(raw);
  auto versions = raw->Exec("SELECT version FROM schema_migrations");
  ASSERT_TRUE(versions.ok()) << versions.error().message;
  ASSERT_EQ(versions->rows.size(), static_cast<size_t>(kTaSchemaVersion));
  // Opening again changes nothing.
  ASSERT_TRUE(Open());
  ASSERT_TRUE(Open());
  EXPECT_EQ(raw->Exec("SELECT version FROM schema_migrations")->rows.size(),
            static_cast<size_t>(kTaSchemaVersion));
  // A database a newer vcrypt-ta migrated is refused, with one line.
  ASSERT_TRUE(raw->Exec("INSERT INTO schema_migrations (version, applied_at) "
                        "VALUES ($1, $2)",
                        {store_internal::SqlParam(int64_t{99}),
                         store_internal::SqlParam(int64_t{0})})
                  .ok());
  auto newer = OpenTaStore(url_);
  ASSERT_FALSE(newer.ok());
  EXPECT_EQ(newer.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(newer.error().message.find("schema version 99, newer"),
            std::string::npos)
      << newer.error().message;
  EXPECT_EQ(newer.error().message.find('\n'), std::string::npos);
}

// PostgreSQL: a connection the server dropped (a restart, a fail-over, an
// administrator) is re-established once and the statement sent again.
TEST(TaStorePgTest, ABrokenConnectionIsReestablished) {
  std::string url;
  ASSERT_NO_FATAL_FAILURE(testing::NeedPostgres(&url));
  if (::testing::Test::IsSkipped()) return;
  auto store = OpenTaStore(url);
  ASSERT_TRUE(store.ok()) << store.error().message;
  auto& store_ = *store;
  ASSERT_TRUE(*store_->ConsumeOnce("jti", "before", 2000));
  auto admin = store_internal::OpenPostgres(url);
  ASSERT_TRUE(admin.ok()) << admin.error().message;
  auto killed = (*admin)->Exec(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
      "WHERE datname = current_database() AND pid <> pg_backend_pid()");
  ASSERT_TRUE(killed.ok()) << killed.error().message;
  ASSERT_GE(killed->rows.size(), 1u);
  auto after = store_->ConsumeOnce("jti", "after", 2000);
  ASSERT_TRUE(after.ok()) << after.error().message;
  EXPECT_TRUE(*after);
  EXPECT_FALSE(*store_->ConsumeOnce("jti", "before", 2000));
}

// Replicas starting at once on an empty database: every one opens, each
// migration is applied once.
TEST_P(TaStoreTest, ReplicasStartingTogetherMigrateOnce) {
  std::string url;
  if (GetParam() == "sqlite") {
    url = "sqlite:" + dir_.path() + "/fresh.db";
  } else {
    std::string why;
    auto* pg = testing::PgServer::Shared(&why);
    ASSERT_NE(pg, nullptr) << why;
    url = pg->CreateDatabase(&why);
    ASSERT_FALSE(url.empty()) << why;
  }
  std::atomic<int> ok{0}, go{0};
  std::vector<std::string> errors(6);
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      ++go;
      while (go < 6) std::this_thread::yield();
      auto s = OpenTaStore(url);
      if (s.ok())
        ++ok;
      else
        errors[i] = s.error().message;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 6) << errors[0] << errors[1] << errors[2];
  auto s = OpenTaStore(url);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE((*s)->ListHosts()->empty());
}

// Database URLs: the forms, and no password on the command line.
TEST(TaStoreUrlTest, FormsAndPasswordsRefused) {
  EXPECT_TRUE(CheckStoreUrl("sqlite:/var/lib/vcrypt-ta/ta.db").ok());
  EXPECT_TRUE(CheckStoreUrl("postgresql://ta@db.example/vcrypt_ta").ok());
  EXPECT_TRUE(CheckStoreUrl("host=/run/postgresql dbname=ta").ok());
  EXPECT_FALSE(CheckStoreUrl("sqlite:").ok());
  EXPECT_FALSE(CheckStoreUrl("/var/lib/ta.db").ok());
  EXPECT_FALSE(CheckStoreUrl("mysql://u:secret@h/db").ok());
  for (const std::string bad :
       {"postgresql://ta:s3cret@db.example/vcrypt_ta",
        "postgresql://db.example/vcrypt_ta?password=s3cret",
        "host=db dbname=ta password=s3cret"}) {
    auto st = CheckStoreUrl(bad);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(st.error().message.find(".pgpass"), std::string::npos);
    EXPECT_EQ(st.error().message.find("s3cret"), std::string::npos);
  }
  auto st = CheckStoreUrl("mysql://u:secret@h/db");
  EXPECT_EQ(st.error().message.find("secret"), std::string::npos);
  EXPECT_TRUE(IsPostgresUrl("postgres://h/db"));
  EXPECT_FALSE(IsPostgresUrl("sqlite:a=b"));
}

}  // namespace
}  // namespace vcrypt
