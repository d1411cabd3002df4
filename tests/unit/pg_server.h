// A real PostgreSQL server for the tests of the Trust Authority's store
// (Debian's postgresql-15: initdb, pg_ctl, postgres from
// /usr/lib/postgresql/<version>/bin), one per test binary run: started by
// the first test that asks for it, stopped when the process exits (also
// after failed tests). It listens only on a unix socket in its own
// temporary directory (no TCP port to collide with anything) and trusts
// its one user there; each test gets a fresh database (CreateDatabase).
//
// initdb refuses to run as root: when the tests run as root (CI), the
// server's directory is given to the `postgres` system user and initdb and
// pg_ctl run as it (runuser); otherwise as the current user.
//
// Missing binaries fail the test (CI installs them through
// scripts/install-deps.sh); a developer without them may set
// VCRYPT_SKIP_PG=1 to skip instead. Cost: initdb + start ~2-3 s once per
// process (with ctest, every test is its own process).
#ifndef VCRYPT_TESTS_UNIT_PG_SERVER_H_
#define VCRYPT_TESTS_UNIT_PG_SERVER_H_

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "trustauthority/sql.h"

namespace vcrypt::testing {

class PgServer {
 public:
  // The shared server, started on first use; nullptr (with `why`) when it
  // cannot start.
  static PgServer* Shared(std::string* why) {
    static std::mutex mu;
    static std::unique_ptr<PgServer> server;
    static std::string failure;
    std::lock_guard lock(mu);
    if (!server && failure.empty()) {
      auto s = std::unique_ptr<PgServer>(new PgServer());
      if (s->Start(&failure)) server = std::move(s);
    }
    if (!server) *why = failure;
    return server.get();
  }

  // The libpq conninfo of database `db` on this server.
  std::string Conninfo(const std::string& db) const {
    return "host=" + dir_ + " port=" + kPort + " user=" + kUser +
           " dbname=" + db;
  }

  // A new, empty database; its conninfo. Names are unique per process.
  std::string CreateDatabase(std::string* why) {
    static std::atomic<int> counter{0};
    const std::string name = "t" + std::to_string(getpid()) + "_" +
                             std::to_string(counter.fetch_add(1));
    auto admin = store_internal::OpenPostgres(Conninfo("postgres"));
    if (!admin.ok()) {
      *why = admin.error().message;
      return "";
    }
    if (auto st = (*admin)->ExecScript("CREATE DATABASE " + name); !st.ok()) {
      *why = st.error().message;
      return "";
    }
    return Conninfo(name);
  }

  ~PgServer() {
    if (started_)
      Run({bin_ + "/pg_ctl", "-D", dir_ + "/data", "-m", "immediate", "-w",
           "stop"});
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

 private:
  static constexpr const char* kPort = "5432";
  static constexpr const char* kUser = "vcrypt_test";

  PgServer() = default;

  // The newest /usr/lib/postgresql/<version>/bin with initdb in it.
  static std::string FindBin() {
    std::string best;
    int best_version = -1;
    std::error_code ec;
    for (const auto& e :
         std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
      const std::string bin = e.path().string() + "/bin";
      if (access((bin + "/initdb").c_str(), X_OK) != 0) continue;
      int v = std::atoi(e.path().filename().c_str());
      if (v > best_version) best_version = v, best = bin;
    }
    return best;
  }

  // Runs `argv` (as the postgres user when we are root) in dir_, output
  // appended to dir_/commands.log; true on exit status 0.
  bool Run(std::vector<std::string> argv) {
    if (as_postgres_)
      argv.insert(argv.begin(), {"/usr/sbin/runuser", "-u", "postgres", "--"});
    const std::string log = dir_ + "/commands.log";
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
      if (chdir(dir_.c_str()) != 0) _exit(126);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0666);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      int null = open("/dev/null", O_RDONLY);
      if (null >= 0) dup2(null, 0);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

  std::string Log() const {
    std::ifstream f(dir_ + "/commands.log");
    std::stringstream ss;
    ss << f.rdbuf();
    std::string s = ss.str();
    return s.size() > 2000 ? s.substr(s.size() - 2000) : s;
  }

  bool Start(std::string* why) {
    bin_ = FindBin();
    if (bin_.empty()) {
      *why =
          "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): "
          "run scripts/install-deps.sh, or set VCRYPT_SKIP_PG=1 to skip";
      return false;
    }
    char tmpl[] = "/tmp/vcrypt-pg-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      *why = "mkdtemp failed";
      return false;
    }
    dir_ = tmpl;
    if (geteuid() == 0) {
      struct passwd* pw = getpwnam("postgres");
      if (pw == nullptr) {
        *why =
            "running as root and there is no 'postgres' user to run "
            "initdb as (the postgresql package makes it)";
        return false;
      }
      if (chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        *why = "cannot chown " + dir_ + " to postgres";
        return false;
      }
      as_postgres_ = true;
    }
    chmod(dir_.c_str(), 0755);
    // The log file must be writable by the postgres user too.
    {
      int fd = open((dir_ + "/commands.log").c_str(), O_WRONLY | O_CREAT, 0666);
      if (fd >= 0) {
        fchmod(fd, 0666);
        close(fd);
      }
    }
    if (!Run({bin_ + "/initdb", "-D", dir_ + "/data", "-U", kUser,
              "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"})) {
      *why = "initdb failed: " + Log();
      return false;
    }
    // Unix socket only, in our directory; no durability needed in tests.
    const std::string opts = std::string("-c listen_addresses='' -k ") + dir_ +
                             " -p " + kPort +
                             " -c fsync=off -c synchronous_commit=off "
                             "-c full_page_writes=off -c max_connections=100";
    if (!Run({bin_ + "/pg_ctl", "-D", dir_ + "/data", "-o", opts, "-l",
              dir_ + "/server.log", "-w", "-t", "60", "start"})) {
      *why = "pg_ctl start failed: " + Log();
      return false;
    }
    started_ = true;
    return true;
  }

  std::string bin_;
  std::string dir_;
  bool as_postgres_ = false;
  bool started_ = false;
};

// For a test that needs PostgreSQL: a fresh database's conninfo, or a
// failure (a skip only with VCRYPT_SKIP_PG=1). Use with
// ASSERT_NO_FATAL_FAILURE and check IsSkipped().
inline void NeedPostgres(std::string* conninfo) {
  std::string why;
  PgServer* pg = PgServer::Shared(&why);
  if (pg != nullptr) *conninfo = pg->CreateDatabase(&why);
  if (pg != nullptr && !conninfo->empty()) return;
  const char* skip = std::getenv("VCRYPT_SKIP_PG");
  if (skip != nullptr && std::string(skip) == "1")
    GTEST_SKIP() << "VCRYPT_SKIP_PG=1: " << why;
  FAIL() << "PostgreSQL: " << why;
}

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_PG_SERVER_H_
