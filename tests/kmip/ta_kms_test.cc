// vcrypt-ta's KMS path against a real pykmip-server: `admin primary-key
// create` makes an AES-256 key on the KMS, and `key-provider-service`
// fetches it at start (over mutual TLS, through the standard provider's
// KMS client) before it serves; a UID the KMS does not have stops it with
// one error line and exit code 8. The binary itself is run (its path comes
// from tests/kmip/CMakeLists.txt as VCRYPT_TA_BINARY).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "tests/kmip/pykmip_fixture.h"

namespace vcrypt::kmip_test {
namespace {

class TaKmsTest : public PyKmipSuite<TaKmsTest> {
 protected:
  void SetUp() override {
    PyKmipSuite::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    char t[] = "/tmp/vcrypt-ta-kms-XXXXXX";
    ASSERT_NE(::mkdtemp(t), nullptr);
    dir_ = t;
    state_ = dir_ + "/state";
    auto r = RunTa({"admin", "--state", state_, "init"});
    ASSERT_EQ(r.code, 0) << r.err;
  }
  void TearDown() override {
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  struct Output {
    int code = -1;
    std::string out, err;
  };

  // Runs the binary to completion.
  static Output RunTa(const std::vector<std::string>& args) {
    std::string cmd = VCRYPT_TA_BINARY;
    for (const auto& a : args) cmd += " '" + a + "'";
    Output o;
    std::string both;
    // stdout and stderr apart: stderr to a file.
    char errfile[] = "/tmp/vcrypt-ta-err-XXXXXX";
    int fd = ::mkstemp(errfile);
    ::close(fd);
    o.code = RunShell(cmd + " 2>" + errfile, &o.out);
    std::ifstream f(errfile);
    o.err.assign(std::istreambuf_iterator<char>(f), {});
    ::unlink(errfile);
    return o;
  }

  std::vector<std::string> KmsArgs() const {
    const std::string c = TestDir::Get().certs();
    return {"--kms",       server().address(),   "--kms-ca",
            c + "/ca.pem", "--kms-cert",         c + "/client.pem",
            "--kms-key",   c + "/client-key.pem"};
  }

  // Starts key-provider-service for `uid`; returns the first stdout line
  // ("" if it exited first) and leaves the process in *pid.
  std::string StartKps(const std::string& uid, pid_t* pid) {
    const std::string c = TestDir::Get().certs();
    std::vector<std::string> args = {"vcrypt-ta",     "key-provider-service",
                                     "--state",       state_,
                                     "--listen",      "127.0.0.1:0",
                                     "--tls-cert",    c + "/server.pem",
                                     "--tls-key",     c + "/server-key.pem",
                                     "--provider-id", "kps1",
                                     "--primary-key", uid};
    for (const auto& a : KmsArgs()) args.push_back(a);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) return "";
    *pid = ::fork();
    if (*pid == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::execv(VCRYPT_TA_BINARY, argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    std::string line;
    pollfd p{out[0], POLLIN, 0};
    while (line.find('\n') == std::string::npos && ::poll(&p, 1, 30000) == 1) {
      char buf[256];
      ssize_t n = ::read(out[0], buf, sizeof(buf));
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    ::close(out[0]);
    // The error line, when it failed (the process has exited: EOF).
    last_err_.clear();
    if (line.empty()) {
      char buf[1024];
      ssize_t n;
      while ((n = ::read(err[0], buf, sizeof(buf))) > 0)
        last_err_.append(buf, static_cast<size_t>(n));
    }
    ::close(err[0]);
    return line;
  }

  static int Wait(pid_t pid) {
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::string dir_, state_, last_err_;
};

TEST_F(TaKmsTest, PrimaryKeyCreatedOnTheKmsIsFetchedAtStart) {
  std::vector<std::string> args = {"admin", "primary-key", "create", "--name",
                                   "ta-test-primary"};
  for (const auto& a : KmsArgs()) args.push_back(a);
  auto r = RunTa(args);
  ASSERT_EQ(r.code, 0) << r.err << server().LogTail();
  ASSERT_FALSE(r.out.empty());
  std::string uid = r.out.substr(0, r.out.find('\n'));
  EXPECT_EQ(r.out, uid + "\n");  // only the UID, for scripts

  pid_t pid = 0;
  std::string line = StartKps(uid, &pid);
  EXPECT_EQ(line.rfind("listening on 127.0.0.1:", 0), 0u)
      << line << last_err_ << server().LogTail();
  ::kill(pid, SIGTERM);
  EXPECT_EQ(Wait(pid), 0);
}

TEST_F(TaKmsTest, UnknownPrimaryKeyStopsTheServiceBeforeItServes) {
  pid_t pid = 0;
  std::string line = StartKps("no-such-uid-4242", &pid);
  EXPECT_EQ(line, "");  // never listened
  EXPECT_EQ(Wait(pid), 8) << last_err_;
  EXPECT_EQ(std::count(last_err_.begin(), last_err_.end(), '\n'), 1)
      << last_err_;
  EXPECT_NE(last_err_.find("cannot fetch the primary key 'no-such-uid-4242'"),
            std::string::npos)
      << last_err_;
}

}  // namespace
}  // namespace vcrypt::kmip_test
