#include "daemon/daemon_main.h"

#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/atomic_file.h"
#include "common/escape.h"
#include "common/openssl_secure_heap.h"
#include "common/secure_buffer.h"
#include "daemon/audit.h"
#include "daemon/controller.h"
#include "daemon/server.h"

namespace vcrypt {
namespace {

namespace po = boost::program_options;

Server* g_server = nullptr;

void OnSignal(int) {
  if (g_server) g_server->Stop();
}

// Called from every connection thread: one write per line, under a lock,
// so lines never interleave (stderr is the journal under systemd).
void Log(const std::string& line) {
  static std::mutex mu;
  const std::string out = "vcryptd: " + line + "\n";
  std::lock_guard lock(mu);
  std::cerr << out << std::flush;
}

int Fail(const Error& e) {
  Log("error: " + e.message);
  return static_cast<int>(e.code);
}

// Evicts the KEKs past their provider's maximum age every 30 s, so an
// expired KEK leaves memory even when nothing uses it again (a use finds
// it expired anyway). Stopped and joined before the Controller goes.
class CacheSweeper {
 public:
  explicit CacheSweeper(Controller* c) : thread_([this, c] { Run(c); }) {}
  ~CacheSweeper() { Stop(); }
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run(Controller* c) {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::seconds(30),
                         [this] { return stop_; })) {
      lock.unlock();
      c->EvictExpiredKeks();
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is initialised
};

}  // namespace

Result<DaemonConfig> ReadDaemonConfig(const std::string& path) {
  VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return MakeError(ErrorCode::kUsage, path + " is not a JSON object");
  DaemonConfig c;
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kUsage, path + ": " + why);
  };
  for (auto& [key, value] : j.items()) {
    std::optional<std::string>* str = nullptr;
    if (key == "state_dir")
      str = &c.state_dir;
    else if (key == "socket")
      str = &c.socket;
    else if (key == "operator_group" || key == "group")
      str = &c.operator_group;
    else if (key == "monitor_group")
      str = &c.monitor_group;
    else if (key == "bypass_workqueues")
      str = &c.bypass_workqueues;
    if (str != nullptr) {
      if (!value.is_string()) return bad("'" + key + "' must be a string");
      *str = value.get<std::string>();
    } else if (key == "allow_test_tcti") {
      if (!value.is_boolean())
        return bad("'allow_test_tcti' must be true or false");
      c.allow_test_tcti = value.get<bool>();
    } else if (key == "request_timeout_ms") {
      if (!value.is_number_integer() || value.get<int64_t>() < 100 ||
          value.get<int64_t>() > 600000)
        return bad(
            "'request_timeout_ms' must be an integer from 100 to 600000");
      c.request_timeout_ms = value.get<int>();
    } else if (key == "volume_paths") {
      if (!value.is_array())
        return bad("'volume_paths' must be an array of directories");
      for (const auto& v : value) {
        if (!v.is_string())
          return bad("'volume_paths' must be an array of directories");
        std::string d = v.get<std::string>();
        while (d.size() > 1 && d.back() == '/') d.pop_back();
        if (d.empty() || d[0] != '/' || d.find("/./") != std::string::npos ||
            d.find("/../") != std::string::npos ||
            d.find("//") != std::string::npos || d.ends_with("/.") ||
            d.ends_with("/.."))
          return bad("volume_paths entry '" +
                     EscapeForMessage(v.get<std::string>(), 256) +
                     "' is not a plain absolute directory");
        c.volume_paths.push_back(d);
      }
    } else {
      return bad("unknown key '" + EscapeForMessage(key, 64) + "'");
    }
  }
  return c;
}

namespace {}  // namespace

int DaemonMain(int argc, char** argv) {
  std::string state_dir = "/var/lib/vcrypt";
  std::string socket_path = "/run/vcrypt/vcryptd.sock";
  std::string config, operator_group, monitor_group, bypass = "auto";
  po::options_description desc(
      "Usage: vcryptd [--state-dir DIR] [--socket PATH] [--config FILE]\n\n"
      "The vcrypt controller. Runs in the foreground. Options");
  desc.add_options()("help,h", "show this help")(
      "state-dir", po::value(&state_dir),
      "state directory (default /var/lib/vcrypt)")(
      "socket", po::value(&socket_path),
      "control socket (default /run/vcrypt/vcryptd.sock)")(
      "config", po::value(&config),
      "JSON config file (keys: state_dir, socket, operator_group, "
      "monitor_group, "
      "volume_paths, allow_test_tcti, request_timeout_ms, bypass_workqueues); "
      "command-line options win")("operator-group", po::value(&operator_group),
                                  "members may open/close volumes and manage "
                                  "VMs (docs/protocol.md, Roles)")(
      "group", po::value(&operator_group), "the same as --operator-group")(
      "monitor-group", po::value(&monitor_group),
      "members may read status, lists and details only")(
      "bypass-workqueues", po::value(&bypass),
      "auto (non-rotational devices), on or off");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "vcryptd: " << e.what() << " (see vcryptd --help)" << std::endl;
    return static_cast<int>(ErrorCode::kUsage);
  }
  if (vm.count("help")) {
    std::cout << desc << std::endl;
    return 0;
  }
  ControllerOptions copts;
  std::optional<int> request_timeout_ms;
  if (!config.empty()) {
    auto c = ReadDaemonConfig(config);
    if (!c.ok()) return Fail(c.error());
    if (!vm.count("state-dir") && c->state_dir) state_dir = *c->state_dir;
    if (!vm.count("socket") && c->socket) socket_path = *c->socket;
    if (!vm.count("operator-group") && !vm.count("group") && c->operator_group)
      operator_group = *c->operator_group;
    if (!vm.count("monitor-group") && c->monitor_group)
      monitor_group = *c->monitor_group;
    if (!vm.count("bypass-workqueues") && c->bypass_workqueues)
      bypass = *c->bypass_workqueues;
    copts.volume_paths = c->volume_paths;
    copts.allow_test_tcti = c->allow_test_tcti;
    request_timeout_ms = c->request_timeout_ms;
  }
  copts.state_dir = state_dir;
  if (bypass == "on") copts.bypass_workqueues = true;
  else if (bypass == "off") copts.bypass_workqueues = false;
  else if (bypass != "auto")
    return Fail(MakeError(ErrorCode::kUsage, "--bypass-workqueues must be auto, on or off"));
  // Test hook of the rekey crash tests (ControllerOptions); unset in
  // production.
  if (const char* n = getenv("VCRYPT_TEST_CRASH_AFTER_TOKEN_WRITES"))
    copts.crash_after_token_writes = static_cast<unsigned>(std::strtoul(n, nullptr, 10));
  // A deep rekey reencrypts in a child: vcryptd itself, re-executed
  // (daemon/reencrypt_helper.h).
  copts.reencrypt_helper = {"/proc/self/exe", "--reencrypt-helper"};
  ServerOptions sopts;
  sopts.socket_path = socket_path;
  if (request_timeout_ms)
    sopts.request_timeout = std::chrono::milliseconds(*request_timeout_ms);
  for (auto [name, out] : {std::pair{&operator_group, &sopts.operator_group},
                           std::pair{&monitor_group, &sopts.monitor_group}}) {
    if (name->empty()) continue;
    struct group* g = getgrnam(name->c_str());
    if (g == nullptr)
      return Fail(
          MakeError(ErrorCode::kNotFound, "no group named '" + *name + "'"));
    *out = g->gr_gid;
  }
  if (sopts.operator_group && sopts.operator_group == sopts.monitor_group)
    return Fail(MakeError(ErrorCode::kUsage,
                          "the operator and monitor groups must differ"));

  // Key material must never reach a core dump, swap or another process.
  umask(0077);
  prctl(PR_SET_DUMPABLE, 0);
  rlimit core{0, 0};
  setrlimit(RLIMIT_CORE, &core);
  if (!SecureBuffer(32).locked())
    return Fail(MakeError(ErrorCode::kInternal,
                          "cannot lock memory for keys (mlock failed); raise "
                          "RLIMIT_MEMLOCK or run as root"));
  // Before any provider loads a key: private keys OpenSSL holds (a
  // standard provider's KMS client key) go to its secure heap.
  if (auto st = InitOpensslSecureHeap(); !st.ok()) return Fail(st.error());

  // The audit log of key operations (docs/audit.md): structured journal
  // records when systemd connected stderr to the journal, else lines on
  // stderr.
  std::shared_ptr<SystemAuditSink> audit = SystemAuditSink::ForThisProcess();
  copts.audit = audit;

  auto controller = Controller::Create(copts);
  if (!controller.ok()) return Fail(controller.error());
  for (const auto& line : (*controller)->UnavailableProviders())
    Log("warning: " + line);

  if (sd_listen_fds(1) == 1) sopts.inherited_fd = SD_LISTEN_FDS_START;
  Server server(controller->get(), sopts, Log);
  if (auto st = server.Listen(); !st.ok()) return Fail(st.error());
  g_server = &server;
  struct sigaction sa{};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  Log("listening on " + (sopts.inherited_fd >= 0 ? std::string("inherited socket")
                                                 : socket_path) +
      ", state in " + state_dir + ", audit log to " +
      (audit->to_journal() ? "the journal" : "stderr"));
  sd_notify(0, "READY=1");
  // Deep rekeys a crash or stop interrupted are finished in the
  // background; volumes open meanwhile (docs/rekey.md).
  auto resuming = std::make_shared<std::atomic<bool>>(true);
  std::thread([c = controller->get(), resuming] {
    for (const auto& line : c->ResumeDeepRekeys()) Log(line);
    *resuming = false;
  }).detach();
  CacheSweeper sweeper(controller->get());
  auto st = server.Run();
  sweeper.Stop();
  g_server = nullptr;
  sd_notify(0, "STOPPING=1");
  (*controller)->EvictAllOnShutdown();
  if (server.active_connections() > 0) {
    // A request still runs after the server's bounded wait: its thread
    // uses the Controller, which must not be destroyed under it. Leave
    // without destructors (keys are wiped with the process's memory).
    Log("stopped (" + std::to_string(server.active_connections()) +
        " request(s) still running were cut off)");
    std::_Exit(0);
  }
  if (*resuming) {
    // The resume thread still uses the controller. Leave without
    // destructors; the reencryption helper gets SIGTERM from the kernel
    // (PR_SET_PDEATHSIG), stops after its current chunk, and the next
    // start resumes it.
    Log("stopped (a deep rekey was still running; it resumes at the next start)");
    std::_Exit(0);
  }
  if (!st.ok()) return Fail(st.error());
  Log("stopped");
  return 0;
}

}  // namespace vcrypt
