#include "daemon/reencrypt_helper.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/handles.h"
#include "common/wire.h"
#include "dmtools/reencrypt.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

std::atomic<bool> g_stop{false};

void OnStopSignal(int) { g_stop = true; }

Error SysError(const std::string& what) {
  return MakeError(ErrorCode::kIo, what + ": " + std::strerror(errno));
}

}  // namespace

Status RunReencryptHelper(
    const std::vector<std::string>& argv, const ReencryptJob& job,
    const SecureBuffer& passphrase,
    const std::function<void(uint64_t, uint64_t)>& progress) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/')
    return MakeError(ErrorCode::kInternal, "no reencryption helper configured");
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) return SysError("cannot create a pipe");
  UniqueFd in_r(in[0]), in_w(in[1]);
  if (pipe2(out, O_CLOEXEC) != 0) return SysError("cannot create a pipe");
  UniqueFd out_r(out[0]), out_w(out[1]);

  // Everything the child needs is built before fork: between fork and exec
  // only async-signal-safe calls are allowed in a threaded process.
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return SysError("cannot start the reencryption helper");
  if (pid == 0) {
    if (dup2(in_r.get(), 0) < 0 || dup2(out_w.get(), 1) < 0) _exit(127);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // vcryptd died before prctl
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  in_r.reset();
  out_w.reset();

  Status sent = WriteMessage(
      in_w.get(),
      Json{{"device", job.device}, {"active_name", job.active_name}},
      &passphrase);
  in_w.reset();
  std::optional<Status> result;
  if (sent.ok()) {
    for (;;) {
      auto msg = ReadMessage(out_r.get());
      if (!msg.ok()) break;  // EOF or garbage: the exit status tells
      const Json& b = msg->body;
      if (b.contains("ok")) {
        if (b["ok"] == true) {
          result = Status::Ok();
        } else {
          Json e = b.value("error", Json::object());
          result =
              Status(MakeError(ErrorCodeFromName(e.value("code", "internal")),
                               e.value("message", "reencryption failed")));
        }
        continue;
      }
      if (progress && b.contains("done") && b.contains("total") &&
          b["done"].is_number_unsigned() && b["total"].is_number_unsigned())
        progress(b["done"].get<uint64_t>(), b["total"].get<uint64_t>());
    }
  }
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (result) return *result;
  if (!sent.ok())
    return MakeError(ErrorCode::kIo,
                     "cannot hand the job to the reencryption helper: " +
                         sent.error().message);
  if (WIFSIGNALED(wstatus))
    return MakeError(ErrorCode::kIo,
                     "the reencryption helper was killed by signal " +
                         std::to_string(WTERMSIG(wstatus)) +
                         "; run the rekey again to resume");
  return MakeError(
      ErrorCode::kIo,
      "the reencryption helper exited with status " +
          std::to_string(WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1) +
          " without a result (" + argv[0] + ")");
}

int ReencryptHelperMain() {
  // As vcryptd: the passphrase must not reach a core dump.
  prctl(PR_SET_DUMPABLE, 0);
  rlimit core{0, 0};
  setrlimit(RLIMIT_CORE, &core);
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto reply = [](const Status& st) {
    Json j = {{"ok", st.ok()}};
    if (!st.ok())
      j["error"] = {{"code", std::string(ErrorCodeName(st.error().code))},
                    {"message", st.error().message}};
    (void)WriteMessage(1, j);
    return st.ok() ? 0 : 1;
  };
  auto msg = ReadMessage(0);
  if (!msg.ok()) return reply(msg.error());
  const Json& b = msg->body;
  if (!b.contains("device") || !b["device"].is_string() ||
      !b.contains("active_name") || !b["active_name"].is_string() ||
      msg->secret.size() == 0)
    return reply(MakeError(ErrorCode::kUsage, "malformed reencryption job"));

  using Clock = std::chrono::steady_clock;
  Clock::time_point last{};
  uint64_t last_done = 0;
  // Test hook (tests/integration/t_rekey.sh): a pause after each chunk,
  // so that a test can kill the reencryption in its middle however fast
  // this machine is. Unset in production.
  unsigned delay_ms = 0;
  if (const char* d = getenv("VCRYPT_TEST_REENCRYPT_CHUNK_DELAY_MS"))
    delay_ms = static_cast<unsigned>(std::strtoul(d, nullptr, 10));
  auto progress = [&](uint64_t done, uint64_t total) {
    if (delay_ms > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    const auto now = Clock::now();
    if (done == total || now - last >= std::chrono::milliseconds(500) ||
        (total > 0 && (done - last_done) * 100 >= total)) {
      (void)WriteMessage(1, Json{{"done", done}, {"total", total}});
      last = now;
      last_done = done;
    }
    return !g_stop.load();
  };
  return reply(RunReencrypt(b["device"].get<std::string>(),
                            b["active_name"].get<std::string>(), msg->secret,
                            progress));
}

}  // namespace vcrypt
