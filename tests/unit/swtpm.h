// A real software TPM (swtpm) for tests: started on a free localhost port
// with its own state directory, killed and removed at the end. Tests that
// use it run tpm2-tools against it too (Tool()).
#ifndef VCRYPT_TESTS_UNIT_SWTPM_H_
#define VCRYPT_TESTS_UNIT_SWTPM_H_

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace vcrypt::testing {

class Swtpm {
 public:
  Swtpm() : dir_("swtpm") {}
  ~Swtpm() { Stop(); }
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  // Starts swtpm; false (with *why) when it is not installed or does not
  // answer.
  bool Start(std::string* why) {
    if (access("/usr/bin/swtpm", X_OK) != 0) {
      *why = "swtpm is not installed (scripts/install-deps.sh)";
      return false;
    }
    port_ = FreePortPair();
    const std::string state = "dir=" + dir_.path();
    const std::string server =
        "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1";
    const std::string ctrl =
        "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1";
    pid_ = fork();
    if (pid_ == 0) {
      execl("/usr/bin/swtpm", "swtpm", "socket", "--tpm2", "--tpmstate",
            state.c_str(), "--server", server.c_str(), "--ctrl", ctrl.c_str(),
            "--flags", "not-need-init,startup-clear",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 200; ++i) {
      if (Connectable(port_)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    *why = "swtpm did not start listening";
    return false;
  }
  void Stop() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  std::string Tcti() const {
    return "swtpm:host=127.0.0.1,port=" + std::to_string(port_);
  }
  const std::string& dir() const { return dir_.path(); }

  // Runs a tpm2-tools command line against this TPM (through sh); returns
  // its exit status.
  int Tool(const std::string& command) const {
    const std::string cmd =
        "TPM2TOOLS_TCTI='" + Tcti() + "' " + command + " >/dev/null 2>&1";
    int st = std::system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }

 private:
  static bool Connectable(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    close(fd);
    return ok;
  }
  // Two consecutive free ports (server, control): probe from a
  // pid-dependent start so parallel test binaries rarely collide.
  static int FreePortPair() {
    for (int p = 20000 + (getpid() % 2000) * 4; p < 60000; p += 2)
      if (!Connectable(p) && !Connectable(p + 1)) return p;
    return 2321;
  }

  TempDir dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_SWTPM_H_
