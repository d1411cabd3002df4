// A real software TPM (swtpm) for tests, and the captured TPM fixtures of
// tests/fixtures/tpm/ (make_fixtures.sh).
//
// Each Swtpm is one swtpm process with its own state directory (so its own
// endorsement seed: a different TPM), on a free 127.0.0.1 port pair, killed
// and removed with its directory when the object dies. Start() says why
// when swtpm is not installed; tests that drive the TPM with tpm2-tools
// skip first on SwtpmMissingReason().
//
// Two ways to run tpm2-tools against it:
//  - Tool(): the command alone. Use it next to a live vcrypt::Tpm (or any
//    other client holding transient objects).
//  - Run() and the helpers built on it (CreateEk, CreateAk, Quote,
//    ActivateCredential, Reset, Restart): in dir(), then flushes ALL
//    transient objects (without a resource manager tpm2-tools leave them
//    loaded, and the TPM has only a few slots). That invalidates handles
//    held by a live vcrypt::Tpm: do not mix the two.
#ifndef VCRYPT_TESTS_UNIT_SWTPM_H_
#define VCRYPT_TESTS_UNIT_SWTPM_H_

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "common/handles.h"
#include "common/hex.h"
#include "tests/test_util.h"

namespace vcrypt::testing {

// tests/fixtures/tpm (the checked-in fixtures), or $VCRYPT_TPM_FIXTURE_DIR.
inline std::string FixtureDir() {
  if (const char* d = std::getenv("VCRYPT_TPM_FIXTURE_DIR"); d && *d) return d;
  return (std::filesystem::path(__FILE__).parent_path().parent_path() /
          "fixtures" / "tpm")
      .string();
}

// The whole file; empty when it cannot be read (tests then fail on size).
inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

inline bool WriteBytes(const std::string& path,
                       std::span<const uint8_t> bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()),
          static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(f);
}

// Runs `cmd` with /bin/sh; stdout+stderr in *output. The exit status, or -1.
inline int RunShell(const std::string& cmd, std::string* output) {
  output->clear();
  FILE* f = ::popen(("( " + cmd + " ) 2>&1").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) output->append(buf, n);
  const int status = ::pclose(f);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Why the tests that drive swtpm with tpm2-tools cannot run here, or ""
// when they can.
inline std::string SwtpmMissingReason() {
  for (const char* tool :
       {"swtpm", "swtpm_ioctl", "swtpm_setup", "tpm2_createek", "tpm2_createak",
        "tpm2_quote", "tpm2_activatecredential"}) {
    std::string out;
    if (RunShell(std::string("command -v ") + tool, &out) != 0) {
      return std::string(tool) +
             " is not installed (apt-get install swtpm swtpm-tools "
             "tpm2-tools)";
    }
  }
  return "";
}

class Swtpm {
 public:
  Swtpm() : dir_("swtpm") {}
  ~Swtpm() { Stop(); }
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  // Manufactures the TPM with swtpm_setup: RSA EK with an EK certificate
  // in NV index 0x01c00002, signed by a local CA kept in dir()/ca (not in
  // the system's /var/lib/swtpm-localca). Call before Start(). "" or why
  // not.
  std::string ManufactureWithEkCertificate() {
    std::error_code ec;
    std::filesystem::create_directories(Path("ca"), ec);
    std::filesystem::create_directories(Path("state"), ec);
    std::ofstream(Path("swtpm_setup.conf"))
        << "create_certs_tool = /usr/bin/swtpm_localca\n"
        << "create_certs_tool_config = " << dir() << "/swtpm-localca.conf\n"
        << "create_certs_tool_options = /etc/swtpm-localca.options\n"
        << "active_pcr_banks = sha256\n";
    std::ofstream(Path("swtpm-localca.conf"))
        << "statedir = " << dir() << "/ca\n"
        << "signingkey = " << dir() << "/ca/signkey.pem\n"
        << "issuercert = " << dir() << "/ca/issuercert.pem\n"
        << "certserial = " << dir() << "/ca/certserial\n";
    std::string out;
    if (RunShell("swtpm_setup --tpm2 --tpmstate " + Path("state") +
                     " --config " + Path("swtpm_setup.conf") +
                     " --create-ek-cert --overwrite",
                 &out) != 0) {
      return "swtpm_setup failed: " + out;
    }
    return "";
  }

  // Starts swtpm (state in dir()/state) on a free port pair; false (with
  // *why) when it is not installed or does not answer.
  bool Start(std::string* why) {
    if (access("/usr/bin/swtpm", X_OK) != 0) {
      *why = "swtpm is not installed (scripts/install-deps.sh)";
      return false;
    }
    std::error_code ec;
    std::filesystem::create_directories(Path("state"), ec);
    if (ec) {
      *why = "cannot create " + Path("state");
      return false;
    }
    *why = "no free port";
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = FreePortPair();
      if (port_ == 0) continue;
      *why = StartOnPort();
      if (why->empty()) return true;
    }
    return false;
  }

  // Starts with an RSA EK (ek.ctx, ek.pub) and an ECDSA P-256 AK under it
  // (ak.ctx, ak.pub, ak.name) made by tpm2-tools in dir(). "" or why not.
  std::string StartWithEkAndAk() {
    std::string why;
    if (!Start(&why)) return why;
    if (std::string e = CreateEk(); !e.empty()) return e;
    return CreateAk("ak", "-G ecc -g sha256 -s ecdsa");
  }

  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  std::string Tcti() const {
    return "swtpm:host=127.0.0.1,port=" + std::to_string(port_);
  }
  const std::string& dir() const { return dir_.path(); }
  std::string Path(const std::string& name) const { return dir_ / name; }
  std::vector<uint8_t> Read(const std::string& name) const {
    return ReadBytes(Path(name));
  }

  // Runs a tpm2-tools command line against this TPM (through sh); returns
  // its exit status. Flushes nothing.
  int Tool(const std::string& command) const {
    const std::string cmd =
        "TPM2TOOLS_TCTI='" + Tcti() + "' " + command + " >/dev/null 2>&1";
    int st = std::system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }

  // Runs a tpm2-tools command line in dir() against this TPM, then flushes
  // all transient objects (see the top of this file). "" or the error and
  // output.
  std::string Run(const std::string& cmd, std::string* output = nullptr) {
    std::string out;
    // Exported: `cmd` may be a list of commands.
    const std::string env =
        "cd " + dir() + " || exit 1; export TPM2TOOLS_TCTI=" + Tcti() + "; ";
    const int rc = RunShell(env + cmd, &out);
    std::string flush_out;
    (void)RunShell(env + "tpm2_flushcontext -t", &flush_out);
    if (output != nullptr) *output = out;
    if (rc != 0)
      return "`" + cmd + "` failed (" + std::to_string(rc) + "): " + out;
    return "";
  }

  // ek.ctx / ek.pub: the RSA 2048 EK from the TCG template.
  std::string CreateEk() {
    return Run("tpm2_createek -c ek.ctx -G rsa -u ek.pub");
  }

  // NAME.ctx / NAME.pub (TPM2B_PUBLIC) / NAME.name under ek.ctx; `algs`
  // e.g. "-G ecc -g sha256 -s ecdsa".
  std::string CreateAk(const std::string& name, const std::string& algs) {
    return Run("tpm2_createak -C ek.ctx -c " + name + ".ctx " + algs + " -u " +
               name + ".pub -n " + name + ".name");
  }

  // Quotes `selection` (tpm2-tools syntax, e.g. "sha256:0,1,2,3,7") with
  // the key `key` (a context file or a persistent handle) over `nonce`:
  // OUT.attest (TPMS_ATTEST), OUT.sig (TPMT_SIGNATURE), OUT.pcrs (values).
  // tpm2_quote asks for RSASSA with an RSA key unless told otherwise
  // (`extra_args` "--scheme rsapss").
  std::string Quote(const std::string& key, const std::string& selection,
                    std::span<const uint8_t> nonce, const std::string& out,
                    const std::string& extra_args = "") {
    return Run("tpm2_quote -c " + key + " -l " + selection + " -g sha256 -q " +
               HexEncode(nonce) + " -m " + out + ".attest -s " + out +
               ".sig -o " + out + ".pcrs -F values " + extra_args);
  }

  // TPM2_ActivateCredential of CRED_FILE (tpm2-tools file format) for the
  // key KEY.ctx protected by EK.ctx, with the EK's policy (PolicySecret of
  // the endorsement hierarchy) in a policy session as tpm2-tools documents
  // it. Writes OUT_FILE.
  std::string ActivateCredential(const std::string& key,
                                 const std::string& cred_file,
                                 const std::string& out_file,
                                 const std::string& ek = "ek") {
    return Run(
        "tpm2_startauthsession --policy-session -S session.ctx && "
        "tpm2_policysecret -S session.ctx -c e >/dev/null && "
        "tpm2_activatecredential -c " +
        key + ".ctx -C " + ek + ".ctx -i " + cred_file + " -o " + out_file +
        " -P session:session.ctx; rc=$?; "
        "tpm2_flushcontext session.ctx; exit $rc");
  }

  // Power events through swtpm's control channel (CMD_INIT = _TPM_Init).
  // A TPM Reset (reboot: resetCount + 1, PCRs cleared) ...
  std::string Reset() {
    return Run("tpm2_shutdown -c && " + Init() + " && tpm2_startup -c");
  }
  // ... and a TPM Restart (Shutdown(STATE) then Startup(CLEAR):
  // restartCount + 1). Both invalidate transient-object contexts: quote
  // across them with a persistent key.
  std::string Restart() {
    return Run("tpm2_shutdown && " + Init() + " && tpm2_startup -c");
  }

 private:
  // `port` on 127.0.0.1: free to bind (`bind`) or accepting (connect).
  static bool Probe(uint16_t port, bool bind) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (!fd.valid()) return false;
    const auto* sa = reinterpret_cast<sockaddr*>(&a);
    return (bind ? ::bind(fd.get(), sa, sizeof(a))
                 : ::connect(fd.get(), sa, sizeof(a))) == 0;
  }

  // A port P with P and P+1 free on 127.0.0.1 right now (0 if none found).
  static uint16_t FreePortPair() {
    for (int attempt = 0; attempt < 50; ++attempt) {
      UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        continue;
      }
      socklen_t len = sizeof(a);
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
      const uint16_t port = ntohs(a.sin_port);
      fd.reset();
      if (port < 65535 && Probe(port, true) && Probe(port + 1, true)) {
        return port;
      }
    }
    return 0;
  }

  std::string Init() const {
    return "swtpm_ioctl --tcp 127.0.0.1:" + std::to_string(port_ + 1) + " -i";
  }

  // "" or why not.
  std::string StartOnPort() {
    const std::string server =
        "type=tcp,port=" + std::to_string(port_) + ",bindaddr=127.0.0.1";
    const std::string ctrl =
        "type=tcp,port=" + std::to_string(port_ + 1) + ",bindaddr=127.0.0.1";
    const std::string state = "dir=" + Path("state");
    const std::string log = Path("swtpm.log");
    const pid_t pid = ::fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execl("/usr/bin/swtpm", "swtpm", "socket", "--tpm2", "--tpmstate",
              state.c_str(), "--server", server.c_str(), "--ctrl",
              ctrl.c_str(), "--flags", "not-need-init,startup-clear",
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    pid_ = pid;
    // Ready when the server port accepts connections; gone if it exited
    // (e.g. someone else took the port in the meantime).
    for (int i = 0; i < 500; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        std::string out;
        (void)RunShell("cat " + log, &out);
        return "swtpm exited: " + out;
      }
      if (Probe(port_, false)) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Stop();
    return "swtpm did not start listening within 5 s";
  }

  TempDir dir_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_SWTPM_H_
