// Shared fixture for the KMIP tests on the host (tests/kmip/*_test.cc):
//  - TestDir: one temporary directory per test process holding the test PKI
//    (make-certs.sh), removed at exit.
//  - PyKmipServer: one pykmip-server instance on 127.0.0.1, driven through
//    pykmip-server.sh (start / kill / restart on the same port).
//  - PyKmipSuite<Suite>: a gtest suite base that starts one server per suite
//    (not per test: a start costs ~2.5 s on the host, ~12 s in a TCG guest)
//    and skips every test when pykmip-server is not installed.
//
// Everything here is inline in a named namespace (not an anonymous one), so
// that every test file of the binary shares one TestDir and one PKI.
#ifndef VCRYPT_TESTS_KMIP_PYKMIP_FIXTURE_H_
#define VCRYPT_TESTS_KMIP_PYKMIP_FIXTURE_H_

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/handles.h"
#include "keyproviders/standard/tls_client.h"

namespace vcrypt::kmip_test {

using Clock = std::chrono::steady_clock;

inline constexpr const char* kPyKmipServer = "/usr/bin/pykmip-server";
inline constexpr const char* kSystemPython = "/usr/bin/python3";

inline double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Where make-certs.sh and pykmip-server.sh live.
inline std::string ScriptDir() {
  if (const char* d = std::getenv("VCRYPT_KMIP_SCRIPT_DIR"); d && *d) return d;
  return VCRYPT_KMIP_SCRIPT_DIR;
}

// Runs a shell command line, returns its exit status; stdout+stderr in
// *output.
inline int RunShell(const std::string& cmd, std::string* output) {
  output->clear();
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) output->append(buf, n);
  int status = ::pclose(f);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// One temporary directory per process with the test PKI (make-certs.sh),
// removed at exit.
class TestDir {
 public:
  static TestDir& Get() {
    static TestDir dir;
    return dir;
  }
  const std::string& path() const { return path_; }
  std::string certs() const { return path_ + "/certs"; }
  const std::string& error() const { return error_; }

 private:
  TestDir() {
    char t[] = "/tmp/vcrypt-kmip-test-XXXXXX";
    if (::mkdtemp(t) == nullptr) {
      error_ = "mkdtemp failed";
      return;
    }
    path_ = t;
    std::string out;
    if (RunShell(ScriptDir() + "/make-certs.sh " + certs(), &out) != 0) {
      error_ = "make-certs.sh failed: " + out;
    }
  }
  ~TestDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  std::string path_;
  std::string error_;
};

// A port on 127.0.0.1 that nothing listens on right now.
inline uint16_t FreePort() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    return 0;
  }
  socklen_t len = sizeof(a);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

// A config from the test PKI: client identity `client` ("client" or
// "other-client"), trusting `ca` ("ca" or "other-ca").
inline TlsConfig Config(const std::string& client = "client",
                        const std::string& ca = "ca") {
  const std::string d = TestDir::Get().certs();
  TlsConfig c;
  c.ca_file = d + "/" + ca + ".pem";
  c.cert_file = d + "/" + client + ".pem";
  c.key_file = d + "/" + client + "-key.pem";
  c.connect_timeout = std::chrono::milliseconds(3000);
  c.io_timeout = std::chrono::milliseconds(5000);
  return c;
}

inline TlsClient MakeClient(const TlsConfig& config) {
  auto c = TlsClient::Create(config);
  EXPECT_TRUE(c.ok()) << c.error().message;
  if (!c.ok()) std::abort();
  return std::move(c).value();
}

// Why PyKMIP tests cannot run here, or "" when they can.
inline std::string PyKmipMissingReason() {
  if (::access(kPyKmipServer, X_OK) != 0 ||
      ::access(kSystemPython, X_OK) != 0) {
    return std::string(kPyKmipServer) +
           " is not installed (apt-get install python3-pykmip)";
  }
  return "";
}

// One pykmip-server instance in TestDir/<name> (config, log, database),
// sharing the process's test PKI. Killed (SIGKILL, fast) when destroyed:
// PyKMIP's graceful stop takes 10-20 s and the database is throwaway.
class PyKmipServer {
 public:
  // `certset`: "default" (server cert from ca.pem) or "other" (from
  // other-ca.pem: a server the test clients do not trust); see
  // pykmip-server.sh.
  explicit PyKmipServer(const std::string& name,
                        std::string certset = "default")
      : dir_(TestDir::Get().path() + "/" + name),
        certset_(std::move(certset)) {}
  ~PyKmipServer() { Kill(); }
  PyKmipServer(const PyKmipServer&) = delete;
  PyKmipServer& operator=(const PyKmipServer&) = delete;

  // Starts on a free port with a fresh database. "" or why not.
  std::string Start() {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    // The server uses the same PKI as the client.
    if (!std::filesystem::exists(dir_ + "/certs")) {
      std::filesystem::create_directory_symlink(TestDir::Get().certs(),
                                                dir_ + "/certs", ec);
    }
    // A free port can be taken by someone else (ctest -j) before PyKMIP
    // binds it: try a few.
    std::string error;
    for (int attempt = 0; attempt < 3; ++attempt) {
      port_ = FreePort();
      error = StartOnPort(/*keep_db=*/false);
      if (error.empty()) return "";
    }
    return error;
  }

  // Starts again on the same port after Kill(): a KMS coming back after an
  // outage, with its keys when `keep_db`.
  std::string Restart(bool keep_db) { return StartOnPort(keep_db); }

  // SIGKILL: a crashed KMS (the kernel closes its sockets at once).
  void Kill() {
    if (port_ == 0) return;
    std::string out;
    (void)RunShell(Script() + " kill " + dir_, &out);
  }

  pid_t Pid() const {
    std::ifstream f(dir_ + "/server.pid");
    pid_t pid = 0;
    f >> pid;
    return pid;
  }

  // The last lines of the server's DEBUG log, for failure messages.
  std::string LogTail(size_t n = 15) const {
    std::ifstream f(dir_ + "/server.log");
    std::vector<std::string> lines;
    for (std::string l; std::getline(f, l);) lines.push_back(l);
    std::string out;
    for (size_t i = lines.size() > n ? lines.size() - n : 0; i < lines.size();
         ++i) {
      out += lines[i] + "\n";
    }
    return "--- " + dir_ + "/server.log tail:\n" + out;
  }

  uint16_t port() const { return port_; }
  const std::string& dir() const { return dir_; }
  // "127.0.0.1:PORT", as the provider and the TLS transport name it.
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  static std::string Script() { return ScriptDir() + "/pykmip-server.sh"; }

 private:
  std::string StartOnPort(bool keep_db) {
    std::string out;
    const std::string env = keep_db ? "PYKMIP_KEEP_DB=1 " : "";
    if (RunShell(env + Script() + " start " + dir_ + " " +
                     std::to_string(port_) + " " + certset_,
                 &out) != 0) {
      return "pykmip-server.sh start failed: " + out;
    }
    return "";
  }

  std::string dir_;
  std::string certset_;
  uint16_t port_ = 0;
};

// Base of a suite that runs against one pykmip-server started once for the
// suite (CRTP: each suite has its own statics, hence its own server):
//
//   class MyTest : public PyKmipSuite<MyTest> {};
//   TEST_F(MyTest, X) { ... server().port() ... }
//
// Every test is skipped when pykmip-server is not installed, and fails when
// it is installed but does not start.
template <typename Suite>
class PyKmipSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = PyKmipMissingReason();
    start_error_.clear();
    if (!skip_reason_.empty()) return;
    if (!TestDir::Get().error().empty()) {
      start_error_ = TestDir::Get().error();
      return;
    }
    const ::testing::TestSuite* s =
        ::testing::UnitTest::GetInstance()->current_test_suite();
    server_ = std::make_unique<PyKmipServer>(
        std::string("pykmip-") + (s != nullptr ? s->name() : "suite"));
    start_error_ = server_->Start();
  }

  static void TearDownTestSuite() { server_.reset(); }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(start_error_.empty()) << start_error_;
  }

  static PyKmipServer& server() { return *server_; }

  static inline std::string skip_reason_;
  static inline std::string start_error_;
  static inline std::unique_ptr<PyKmipServer> server_;
};

}  // namespace vcrypt::kmip_test

#endif  // VCRYPT_TESTS_KMIP_PYKMIP_FIXTURE_H_
