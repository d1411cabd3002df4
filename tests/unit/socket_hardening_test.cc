// vcryptd under hostile callers (issue 13, sections 1 and 2): the real
// vcryptd binary, started by the test with its own state directory and
// socket, attacked over the real socket by processes running as other
// users (fork + setgroups/setgid/setuid; needs root, as CI runs).
//
// Every test talks to the daemon through the socket and its stderr only,
// so each can be pointed at another build with VCRYPT_TEST_VCRYPTD=PATH:
// against a vcryptd without the fixes they fail (a crash, a loaded TCTI, a
// key handed to a group member, a forged log line, a spinning accept loop,
// thousands of threads, a stop that waits a minute for idle clients).
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "daemon/roles.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr uid_t kOtherUid = 65534;  // nobody

std::string VcryptdPath() {
  if (const char* p = getenv("VCRYPT_TEST_VCRYPTD")) return p;
  return std::string(VCRYPT_BINARY_DIR) + "/daemon/vcryptd";
}

gid_t GroupId(const char* name) {
  struct group* g = getgrnam(name);
  return g ? g->gr_gid : static_cast<gid_t>(-1);
}

// Groups every Debian system has (base-passwd), used as the operator and
// the monitor group: the test changes nothing in /etc.
constexpr const char* kOperatorGroup = "operator";
constexpr const char* kMonitorGroup = "staff";

// Who a request comes from.
struct Peer {
  uid_t uid = 0;
  std::vector<gid_t> groups;  // supplementary; the primary gid is uid's
  static Peer Root() { return Peer{}; }
  static Peer Operator() { return Peer{kOtherUid, {GroupId(kOperatorGroup)}}; }
  static Peer Monitor() { return Peer{kOtherUid, {GroupId(kMonitorGroup)}}; }
  static Peer Stranger() { return Peer{kOtherUid, {}}; }
};

// Drops to `peer` in a forked child. Only async-signal-safe calls.
bool BecomeInChild(const Peer& p) {
  if (p.uid == 0) return true;
  if (setgroups(p.groups.size(), p.groups.data()) != 0) return false;
  if (setgid(kOtherUid) != 0) return false;
  return setuid(p.uid) == 0;
}

int ConnectTo(const std::string& socket_path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` (raw bytes) as `peer` and returns the daemon's first
// line ("" when the connection closed without one, "<timeout>" when none
// came within `timeout`). The request is built before fork: the child
// only connects, writes and reads.
std::string RawExchange(
    const std::string& socket_path, const std::string& request,
    const Peer& peer,
    std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  int p[2];
  if (pipe(p) != 0) return "<pipe>";
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    if (!BecomeInChild(peer)) _exit(90);
    int fd = ConnectTo(socket_path);
    if (fd < 0) _exit(91);
    size_t off = 0;
    while (off < request.size()) {
      ssize_t w =
          send(fd, request.data() + off, request.size() - off, MSG_NOSIGNAL);
      if (w <= 0) break;  // a refused peer still gets its answer to read
      off += static_cast<size_t>(w);
    }
    char buf[65536];
    for (;;) {
      ssize_t r = read(fd, buf, sizeof buf);
      if (r <= 0) break;
      if (write(p[1], buf, static_cast<size_t>(r)) != r) break;
      if (memchr(buf, '\n', static_cast<size_t>(r)) != nullptr) break;
    }
    _exit(0);
  }
  close(p[1]);
  std::string out;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - Clock::now());
    pollfd pf = {p[0], POLLIN, 0};
    if (left.count() <= 0 ||
        poll(&pf, 1, static_cast<int>(left.count())) <= 0) {
      kill(pid, SIGKILL);
      out = "<timeout>";
      break;
    }
    char buf[65536];
    ssize_t r = read(p[0], buf, sizeof buf);
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (auto nl = out.find('\n'); nl != std::string::npos) out.resize(nl);
  return out;
}

std::string RequestLine(const std::string& op, const Json& args,
                        const std::string& secret = "") {
  Json req = {{"op", op}, {"args", args}};
  if (!secret.empty()) req["secret_bytes"] = secret.size();
  return req.dump() + "\n" + secret;
}

// The daemon's answer as JSON (discarded when it is not JSON).
Json Call(const std::string& socket_path, const std::string& op,
          const Json& args, const Peer& peer, const std::string& secret = "") {
  return Json::parse(
      RawExchange(socket_path, RequestLine(op, args, secret), peer), nullptr,
      false);
}

std::string ErrorCodeOf(const Json& answer) {
  if (!answer.is_object()) return "<no answer>";
  if (answer.value("ok", false)) return "ok";
  if (answer.contains("error") && answer["error"].is_object())
    return answer["error"].value("code", "<no code>");
  return "<malformed>";
}

// user + system CPU seconds of a process so far.
double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)),
                   std::istreambuf_iterator<char>());
  auto close_paren = stat.rfind(')');
  if (close_paren == std::string::npos) return -1;
  std::istringstream in(stat.substr(close_paren + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;  // NOLINT(runtime/int)
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

int ThreadCount(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

// vcryptd as a child process, stderr into a file.
class VcryptdProcess {
 public:
  struct Options {
    std::vector<std::string> args;
    Json config;  // written to DIR/vcryptd.json and passed when not null
    std::map<std::string, std::string> env;
    rlim_t nofile = 0;  // RLIMIT_NOFILE, 0: inherited
  };
  VcryptdProcess(const std::string& dir, Options o) : dir_(dir) {
    socket_ = dir + "/sock";
    std::vector<std::string> argv = {VcryptdPath(), "--state-dir",
                                     dir + "/state", "--socket", socket_};
    if (!o.config.is_null()) {
      EXPECT_TRUE(WriteFileAtomic(dir + "/vcryptd.json", o.config.dump()).ok());
      argv.push_back("--config");
      argv.push_back(dir + "/vcryptd.json");
    }
    for (auto& a : o.args) argv.push_back(a);
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    log_ = dir + "/vcryptd.log";
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd < 0) _exit(120);
      dup2(fd, 2);
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      for (auto& [k, v] : o.env) setenv(k.c_str(), v.c_str(), 1);
      if (o.nofile) {
        rlimit r{o.nofile, o.nofile};
        setrlimit(RLIMIT_NOFILE, &r);
      }
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    // Up when it answers ping as root.
    for (int i = 0; i < 200; ++i) {
      if (fs::exists(socket_) &&
          ErrorCodeOf(Call(socket_, "ping", Json::object(), Peer::Root())) ==
              "ok") {
        up_ = true;
        break;
      }
      if (!Alive()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    // Others must reach the socket file; authorisation is vcryptd's.
    chmod(dir.c_str(), 0755);
  }
  ~VcryptdProcess() {
    if (pid_ > 0 && Alive()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  bool up() const { return up_; }
  pid_t pid() const { return pid_; }
  const std::string& socket() const { return socket_; }
  bool Alive() {
    if (exited_) return false;
    int st = 0;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      status_ = st;
      return false;
    }
    return true;
  }
  // SIGTERM, then the time until it exited (nullopt: not within `limit`).
  std::optional<std::chrono::milliseconds> Terminate(
      std::chrono::seconds limit) {
    auto t0 = Clock::now();
    kill(pid_, SIGTERM);
    while (Clock::now() - t0 < limit) {
      if (!Alive())
        return std::chrono::duration_cast<std::chrono::milliseconds>(
            Clock::now() - t0);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::nullopt;
  }
  int status() const { return status_; }
  std::string Log() const {
    auto text = ReadFile(log_);
    return text.ok() ? *text : std::string();
  }

 private:
  std::string dir_, socket_, log_;
  pid_t pid_ = -1;
  bool up_ = false, exited_ = false;
  int status_ = 0;
};

class SocketHardeningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0)
      GTEST_SKIP() << "needs root (switches uid, formats files)";
    if (GroupId(kOperatorGroup) == static_cast<gid_t>(-1) ||
        GroupId(kMonitorGroup) == static_cast<gid_t>(-1))
      GTEST_SKIP() << "groups '" << kOperatorGroup << "' and '" << kMonitorGroup
                   << "' are missing";
    if (!fs::exists(VcryptdPath()))
      GTEST_SKIP() << VcryptdPath() << " not built";
    ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  }
  // A daemon with the operator group (--group: older builds know it).
  void Start(VcryptdProcess::Options o = {}) {
    o.args.insert(o.args.begin(), {"--group", kOperatorGroup});
    daemon_.emplace(dir_.path(), std::move(o));
    ASSERT_TRUE(daemon_->up()) << daemon_->Log();
  }
  // Native provider p1 and VM vm1, as root.
  void AddProviderAndVm() {
    ASSERT_EQ(
        ErrorCodeOf(Call("provider.add", {{"type", "native"}, {"name", "p1"}},
                         Peer::Root())),
        "ok");
    ASSERT_EQ(ErrorCodeOf(Call("vm.create", {{"vm", "vm1"}}, Peer::Root())),
              "ok");
  }
  Json Call(const std::string& op, const Json& args, const Peer& peer,
            const std::string& secret = "") {
    return vcrypt::Call(daemon_->socket(), op, args, peer, secret);
  }

  testing::TempDir dir_{"hardening"};
  std::optional<VcryptdProcess> daemon_;
};

// --- 1. roles -------------------------------------------------------------

// An operator-group member asked for the native primary key's backup and
// got it (every KEK of the host). Exporting a key is root's.
TEST_F(SocketHardeningTest, OperatorCannotExportThePrimaryKey) {
  Start();
  ASSERT_EQ(
      ErrorCodeOf(Call("provider.add", {{"type", "native"}, {"name", "local"}},
                       Peer::Root())),
      "ok");
  Json r = Call("provider.backup", {{"name", "local"}}, Peer::Operator(),
                "pw-123456");
  EXPECT_EQ(ErrorCodeOf(r), "permission_denied") << r.dump();
  EXPECT_FALSE(r.value("ok", false) && r["result"].contains("p12"));
  // Root still can.
  r = Call("provider.backup", {{"name", "local"}}, Peer::Root(), "pw-123456");
  EXPECT_EQ(ErrorCodeOf(r), "ok") << r.dump();
}

// Every op, under every role, over the real socket: allowed exactly when
// the role table (daemon/roles.h) says so; refused ones change nothing.
TEST_F(SocketHardeningTest, EveryOpUnderEveryRole) {
  const std::string vols = dir_ / "vols";
  ASSERT_EQ(mkdir(vols.c_str(), 0755), 0);
  VcryptdProcess::Options o;
  o.args = {"--monitor-group", kMonitorGroup};
  o.config = {{"volume_paths", {vols}}};
  Start(o);
  auto root = Peer::Root();
  ASSERT_EQ(ErrorCodeOf(Call("provider.add",
                             {{"type", "native"}, {"name", "p1"}}, root)),
            "ok");
  for (const char* vm : {"vm1", "vmu-monitor", "vmu-operator", "vmu-root",
                         "vmd-monitor", "vmd-operator", "vmd-root"})
    ASSERT_EQ(ErrorCodeOf(Call("vm.create", {{"vm", vm}}, root)), "ok") << vm;
  ASSERT_EQ(ErrorCodeOf(Call("volume.create",
                             {{"vm", "vm1"},
                              {"disk", "d1"},
                              {"file", dir_ / "d1.img"},
                              {"size", 40u << 20}},
                             root)),
            "ok");
  // Minimal arguments per op; %r is replaced by the role's name so ops
  // that create or remove something get their own target per role.
  const std::map<std::string, Json> args = {
      {"ping", Json::object()},
      {"status", Json::object()},
      {"provider.list", Json::object()},
      {"provider.show", {{"name", "p1"}}},
      {"vm.list", Json::object()},
      {"vm.show", {{"vm", "vm1"}}},
      {"volume.list", Json::object()},
      {"open", {{"vm", "vm1"}, {"disk", "d1"}}},
      {"open_all", Json::object()},
      {"close", {{"vm", "vm1"}, {"disk", "d1"}}},
      {"vm.create", {{"vm", "vmc-%r"}}},
      {"vm.set", {{"vm", "vm1"}, {"auto_unlock", true}}},
      {"vm.register", {{"vm", "vmr-%r"}, {"from", {dir_ / "d1.img"}}}},
      {"vm.unregister", {{"vm", "vmu-%r"}}},
      {"vm.incoming",
       {{"vm", "vm1"},
        {"volumes",
         {{{"disk", "d1"},
           {"uuid", "00000000-0000-4000-8000-000000000000"},
           {"image", dir_ / "d1.img"}}}}}},
      {"vm.depart", {{"vm", "vmi-%r"}, {"reason", "migrated"}}},
      {"vm.rekey", {{"vm", "vm1"}}},
      {"volume.create",
       {{"vm", "vm1"},
        {"disk", "c%r"},
        {"file", vols + "/%r.img"},
        {"size", 40u << 20}}},
      {"provider.add", {{"type", "native"}, {"name", "pa-%r"}}},
      {"provider.remove", {{"name", "pa-%r"}, {"force", true}}},
      {"provider.default", {{"name", "p1"}}},
      {"provider.set", {{"name", "p1"}, {"kek_cache_max_age", "1h"}}},
      {"provider.backup", {{"name", "p1"}}},
      {"provider.restore", {{"name", "rs-%r"}, {"p12", "AAAA"}}},
      {"vm.delete", {{"vm", "vmd-%r"}}},
      {"volume.recovery_key.add", {{"vm", "vm1"}, {"disk", "d1"}}},
      {"volume.recovery_key.remove", {{"vm", "vm1"}, {"disk", "d1"}}},
      {"cache.evict", Json::object()},
  };
  const std::set<std::string> with_secret = {"provider.backup",
                                             "provider.restore"};
  for (const auto& op : KnownOps())
    ASSERT_TRUE(args.count(op)) << "op '" << op << "' has no case in this test";
  auto subst = [](Json j, const std::string& role) {
    std::string s = j.dump();
    for (size_t p; (p = s.find("%r")) != std::string::npos;)
      s.replace(p, 2, role);
    return Json::parse(s);
  };
  struct R {
    const char* name;
    Peer peer;
    std::optional<Role> role;
  };
  // Strangers first, root last: what lower roles are refused must still
  // be there for the higher ones.
  for (const R& r : {R{"stranger", Peer::Stranger(), std::nullopt},
                     R{"monitor", Peer::Monitor(), Role::kMonitor},
                     R{"operator", Peer::Operator(), Role::kOperator},
                     R{"root", Peer::Root(), Role::kRoot}}) {
    for (const auto& op : KnownOps()) {
      Json a = subst(args.at(op), r.name);
      Json answer =
          Call(op, a, r.peer, with_secret.count(op) ? "pw-123456" : "");
      const std::string code = ErrorCodeOf(answer);
      const bool allowed = r.role && *r.role >= *RequiredRole(op, a);
      if (allowed) {
        EXPECT_NE(code, "permission_denied")
            << r.name << " " << op << ": " << answer.dump();
        EXPECT_NE(code, "<no answer>") << r.name << " " << op;
      } else {
        EXPECT_EQ(code, "permission_denied")
            << r.name << " " << op << ": " << answer.dump();
      }
    }
  }
  // What the refused calls would have made or removed is as it was.
  Json provs = Call("provider.list", Json::object(), root);
  std::set<std::string> names;
  for (const auto& p : provs["result"]["providers"]) names.insert(p["name"]);
  EXPECT_EQ(names,
            (std::set<std::string>{"p1"}));  // root added and removed pa-root
  Json vms = Call("vm.list", Json::object(), root);
  std::set<std::string> vm_names;
  for (const auto& v : vms["result"]["vms"]) vm_names.insert(v["vm"]);
  for (const char* gone :
       {"vmu-operator", "vmu-root", "vmd-root", "vmc-monitor"})
    EXPECT_EQ(vm_names.count(gone), 0u) << gone;
  for (const char* kept : {"vmu-monitor", "vmd-monitor", "vmd-operator",
                           "vmc-operator", "vmc-root"})
    EXPECT_EQ(vm_names.count(kept), 1u) << kept;
  EXPECT_FALSE(fs::exists(vols + "/monitor.img"));
  EXPECT_TRUE(fs::exists(vols + "/operator.img"));

  // Argument-dependent: a provider change or revoke_old is root's.
  for (const Json& a : {Json{{"vm", "vm1"}, {"provider", "p1"}},
                        Json{{"vm", "vm1"}, {"revoke_old", true}}})
    EXPECT_EQ(ErrorCodeOf(Call("vm.rekey", a, Peer::Operator())),
              "permission_denied")
        << a.dump();
}

// The operator group formats only under volume_paths, only block devices
// or new files, and never through a symlink that leads elsewhere.
TEST_F(SocketHardeningTest, OperatorFormatsOnlyUnderVolumePaths) {
  const std::string vols = dir_ / "vols";
  const std::string elsewhere = dir_ / "elsewhere";
  ASSERT_EQ(mkdir(vols.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(elsewhere.c_str(), 0755), 0);
  ASSERT_EQ(symlink(elsewhere.c_str(), (vols + "/link").c_str()), 0);
  ASSERT_TRUE(
      WriteFileAtomic(vols + "/existing.img", std::string(1 << 20, 'x')).ok());
  VcryptdProcess::Options o;
  o.config = {{"volume_paths", {vols}}};
  Start(o);
  ASSERT_NO_FATAL_FAILURE(AddProviderAndVm());
  auto create = [&](const std::string& disk, const std::string& key,
                    const std::string& path) {
    Json a = {{"vm", "vm1"}, {"disk", disk}, {key, path}};
    if (key == "file") a["size"] = 40u << 20;
    return ErrorCodeOf(Call("volume.create", a, Peer::Operator()));
  };
  EXPECT_EQ(create("a", "file", elsewhere + "/a.img"), "permission_denied");
  EXPECT_EQ(create("b", "file", vols + "/link/b.img"), "permission_denied");
  EXPECT_EQ(create("c", "file", vols + "/../elsewhere/c.img"),
            "permission_denied");
  EXPECT_EQ(create("d", "device", vols + "/existing.img"), "permission_denied");
  EXPECT_EQ(create("e", "device", "/dev/null"), "permission_denied");
  EXPECT_FALSE(fs::exists(elsewhere + "/a.img"));
  EXPECT_FALSE(fs::exists(elsewhere + "/b.img"));
  EXPECT_FALSE(fs::exists(elsewhere + "/c.img"));
  EXPECT_TRUE(*ReadFile(vols + "/existing.img") == std::string(1 << 20, 'x'));
  // A directory others can write to is refused: they could plant a link.
  ASSERT_EQ(chmod(vols.c_str(), 0777), 0);
  EXPECT_EQ(create("f", "file", vols + "/f.img"), "permission_denied");
  ASSERT_EQ(chmod(vols.c_str(), 0755), 0);
  EXPECT_EQ(create("g", "file", vols + "/g.img"), "ok");
  // Root is not bound by volume_paths.
  Json a = {{"vm", "vm1"},
            {"disk", "h"},
            {"file", elsewhere + "/h.img"},
            {"size", 40u << 20}};
  EXPECT_EQ(ErrorCodeOf(Call("volume.create", a, Peer::Root())), "ok");
}

// volume.create --device resolved its path several times (signature
// probe, crypt_init, format): a symlink swapped in between redirected the
// format to another device. The path swaps between a fresh empty file and
// a symlink to a canary volume (which the probe refuses to overwrite)
// as fast as it can, while root formats it again and again: the canary
// must stay byte for byte as it was.
TEST_F(SocketHardeningTest, FormatCannotBeRedirectedBySwappingThePath) {
  Start();
  ASSERT_NO_FATAL_FAILURE(AddProviderAndVm());
  ASSERT_EQ(ErrorCodeOf(Call("vm.create", {{"vm", "canary"}}, Peer::Root())),
            "ok");
  const std::string canary = dir_ / "canary.img";
  ASSERT_EQ(ErrorCodeOf(Call("volume.create",
                             {{"vm", "canary"},
                              {"disk", "c"},
                              {"file", canary},
                              {"size", 40u << 20}},
                             Peer::Root())),
            "ok");
  const std::string before = *ReadFile(canary);
  int formatted = 0, refused = 0;
  const auto until = Clock::now() + std::chrono::seconds(8);
  for (int i = 0; Clock::now() < until && i < 400; ++i) {
    const std::string p = dir_ / ("p" + std::to_string(i));
    const std::string q = dir_ / ("q" + std::to_string(i));
    { std::ofstream f(p); }
    ASSERT_EQ(truncate(p.c_str(), 40 << 20), 0);
    ASSERT_EQ(symlink(canary.c_str(), q.c_str()), 0);
    std::atomic<bool> stop{false};
    std::thread swapper([&] {
      while (!stop)
        renameat2(AT_FDCWD, p.c_str(), AT_FDCWD, q.c_str(), RENAME_EXCHANGE);
    });
    Json r =
        Call("volume.create",
             {{"vm", "vm1"}, {"disk", "d" + std::to_string(i)}, {"device", p}},
             Peer::Root());
    stop = true;
    swapper.join();
    (ErrorCodeOf(r) == "ok" ? formatted : refused)++;
    // A bool, not the bytes: gtest would print (and diff) 40 MiB.
    const bool untouched = *ReadFile(canary) == before;
    ASSERT_TRUE(untouched) << "the canary was overwritten after " << formatted
                           << " formats, " << refused
                           << " refusals: " << r.dump();
    unlink(p.c_str());
    unlink(q.c_str());
  }
  EXPECT_GT(formatted, 0);
  EXPECT_GT(refused, 0);
}

// --- TCTI: never a path, never a module of the caller's choosing ----------

TEST_F(SocketHardeningTest, TctiIsAnAllowlistAndNothingIsLoaded) {
  const std::string canary = dir_ / "canary";
  const std::string lddebug = dir_ / "ld";
  VcryptdProcess::Options o;
  o.env = {{"VCRYPT_TCTI_CANARY", canary},
           {"LD_DEBUG", "files"},
           {"LD_DEBUG_OUTPUT", lddebug}};
  Start(o);
  // A real CA certificate, so that a build without the check gets past
  // its other checks to the TPM (and loads the canary).
  const std::string cmd =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
      "-nodes -subj /CN=ca -days 2 -keyout " +
      dir_ / "ca.key" + " -out " + dir_ / "ca.pem" + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const std::string ca_pem = *ReadFile(dir_ / "ca.pem");
  const std::string so = VCRYPT_TCTI_CANARY_SO;
  for (const std::string& tcti :
       {so, so + ":x", "device:" + so, "device:/dev/../" + so.substr(1),
        "../../" + so, std::string("tabrmd:bus_name=x"),
        std::string("libtss2-tcti-device.so.0:/dev/tpm0"),
        std::string("swtpm:host=127.0.0.1,port=9"),
        std::string("device:/dev/sda"),
        std::string("device:/dev/tpm0/../sda")}) {
    Json r = Call("provider.add",
                  {{"type", "trusted"},
                   {"name", "t"},
                   {"attestation", "https://127.0.0.1:9"},
                   {"kps", "https://127.0.0.1:9"},
                   {"ca_pem", ca_pem},
                   {"host", "h1"},
                   {"tcti", tcti}},
                  Peer::Root());
    EXPECT_EQ(ErrorCodeOf(r), "invalid_argument") << tcti << ": " << r.dump();
    if (r.contains("error")) {
      EXPECT_EQ(r["error"]["message"].get<std::string>().find('\n'),
                std::string::npos);
    }
    // The same for a native provider's TPM-sealed primary key.
    Json n =
        Call("provider.add",
             {{"type", "native"}, {"name", "n"}, {"tpm", true}, {"tcti", tcti}},
             Peer::Root());
    EXPECT_EQ(ErrorCodeOf(n), "invalid_argument") << tcti << ": " << n.dump();
  }
  EXPECT_FALSE(fs::exists(dir_ / "state/providers/n"));
  EXPECT_FALSE(fs::exists(canary)) << "vcryptd loaded " << so;
  // The dynamic loader's own record: it never opened the canary.
  std::string ld;
  for (const auto& e : fs::directory_iterator(dir_.path()))
    if (e.path().filename().string().rfind("ld.", 0) == 0)
      ld += *ReadFile(e.path());
  EXPECT_NE(ld.find("calling init"), std::string::npos)
      << "LD_DEBUG recorded nothing";
  EXPECT_EQ(ld.find("tcti_canary"), std::string::npos);
  EXPECT_TRUE(daemon_->Alive());
}

// --- 2. untrusted bytes on the socket --------------------------------------

// 500,000 nested arrays killed vcryptd (recursive copy); now one error.
TEST_F(SocketHardeningTest, DeepNestingIsRefusedAndTheDaemonLives) {
  Start();
  std::string req = R"({"op":"status","args":)" + std::string(500000, '[') +
                    std::string(500000, ']') + "}\n";
  std::string answer = RawExchange(daemon_->socket(), req, Peer::Operator());
  Json j = Json::parse(answer, nullptr, false);
  EXPECT_EQ(ErrorCodeOf(j), "usage") << answer.substr(0, 200);
  EXPECT_TRUE(daemon_->Alive()) << daemon_->Log();
  EXPECT_EQ(ErrorCodeOf(Call("status", Json::object(), Peer::Root())), "ok");
  // Within the limit is fine.
  std::string ok = R"({"op":"status","args":{"x":)" + std::string(20, '[') +
                   std::string(20, ']') + "}}\n";
  EXPECT_EQ(ErrorCodeOf(Json::parse(
                RawExchange(daemon_->socket(), ok, Peer::Operator()), nullptr,
                false)),
            "ok");
}

// A newline in an op cannot forge a log (or audit) line.
TEST_F(SocketHardeningTest, ClientStringsAreEscapedInTheLog) {
  Start();
  const std::string forged = "vcrypt-audit: op=kek.destroy result=ok";
  Json r = Call("x\n" + forged + "\n\x1b[2J", Json::object(), Peer::Operator());
  EXPECT_EQ(ErrorCodeOf(r), "usage");
  Call("vm.show", {{"vm", "a\n" + forged}}, Peer::Operator());
  std::string log = daemon_->Log();
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_NE(line.rfind(forged, 0), 0u) << "forged line in the log:\n" << log;
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << "raw escape in the log";
  }
  EXPECT_NE(log.find("\\x0a"), std::string::npos) << log;
}

// 2,000 idle connections from an operator-group user: the daemon keeps a
// bounded number of threads and fds, stays idle, and root gets answers.
TEST_F(SocketHardeningTest, IdleConnectionsCannotStarveRoot) {
  Start();
  int ready[2], done[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(done), 0);
  pid_t holder = fork();
  if (holder == 0) {
    close(ready[0]);
    close(done[1]);
    rlimit r{4096, 4096};
    setrlimit(RLIMIT_NOFILE, &r);
    if (!BecomeInChild(Peer::Operator())) _exit(90);
    int opened = 0;
    for (int i = 0; i < 2000; ++i)
      if (ConnectTo(daemon_->socket()) >= 0) ++opened;
    (void)!write(ready[1], &opened, sizeof opened);
    char c;
    (void)!read(done[0], &c, 1);  // hold them until the parent is done
    _exit(0);
  }
  close(ready[1]);
  close(done[0]);
  int opened = 0;
  ASSERT_EQ(read(ready[0], &opened, sizeof opened),
            static_cast<ssize_t>(sizeof opened));
  EXPECT_EQ(opened, 2000);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto t0 = Clock::now();
  Json st = Call("status", Json::object(), Peer::Root());
  auto took = Clock::now() - t0;
  EXPECT_EQ(ErrorCodeOf(st), "ok");
  EXPECT_LT(took, std::chrono::seconds(2));
  double cpu0 = CpuSeconds(daemon_->pid());
  std::this_thread::sleep_for(std::chrono::seconds(1));
  double cpu1 = CpuSeconds(daemon_->pid());
  EXPECT_LT(cpu1 - cpu0, 0.1) << "vcryptd is busy with idle connections";
  EXPECT_LE(ThreadCount(daemon_->pid()), 64) << "a thread per idle connection";
  close(done[1]);
  waitpid(holder, nullptr, 0);
  close(ready[0]);
  EXPECT_TRUE(daemon_->Alive());
}

// Out of file descriptors, accept(2) fails while the connection stays
// queued: the loop must not spin on it, and serves again once fds free up.
TEST_F(SocketHardeningTest, OutOfFileDescriptorsDoesNotSpin) {
  VcryptdProcess::Options o;
  o.nofile = 48;
  Start(o);
  std::vector<int> held;
  for (int i = 0; i < 80; ++i) {
    int fd = ConnectTo(daemon_->socket());
    if (fd >= 0) held.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  double cpu0 = CpuSeconds(daemon_->pid());
  std::this_thread::sleep_for(std::chrono::seconds(1));
  double cpu1 = CpuSeconds(daemon_->pid());
  EXPECT_LT(cpu1 - cpu0, 0.2) << "accept loop spins on EMFILE";
  for (int fd : held) close(fd);
  Json st;
  for (int i = 0; i < 50 && ErrorCodeOf(st) != "ok"; ++i) {
    st = Call("status", Json::object(), Peer::Root(), "");
    if (ErrorCodeOf(st) != "ok")
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(ErrorCodeOf(st), "ok");
  EXPECT_TRUE(daemon_->Alive());
}

// A client that sends half a request and sleeps is dropped.
TEST_F(SocketHardeningTest, HalfARequestIsDroppedAfterTheTimeout) {
  VcryptdProcess::Options o;
  o.config = {{"request_timeout_ms", 500}};
  Start(o);
  int fd = ConnectTo(daemon_->socket());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "{\"op\":\"sta", 10), 10);
  pollfd p = {fd, POLLIN, 0};
  auto t0 = Clock::now();
  ASSERT_EQ(poll(&p, 1, 5000), 1) << "still connected after 5 s";
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  char buf[512];
  ssize_t n;
  std::string got;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    got.append(buf, static_cast<size_t>(n));
  EXPECT_EQ(n, 0) << "the connection is closed";
  EXPECT_NE(got.find("timed out"), std::string::npos) << got;
  close(fd);
}

// vcryptd stops promptly with idle clients connected, and still evicts
// (and audits) every cached KEK.
TEST_F(SocketHardeningTest, StopsPromptlyWithIdleClientsAndEvictsKeks) {
  Start();
  ASSERT_NO_FATAL_FAILURE(AddProviderAndVm());
  std::vector<int> idle;
  for (int i = 0; i < 5; ++i) idle.push_back(ConnectTo(daemon_->socket()));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto took = daemon_->Terminate(std::chrono::seconds(10));
  ASSERT_TRUE(took.has_value()) << "vcryptd did not stop within 10 s";
  EXPECT_LT(*took, std::chrono::seconds(3));
  EXPECT_TRUE(WIFEXITED(daemon_->status()) &&
              WEXITSTATUS(daemon_->status()) == 0);
  std::string log = daemon_->Log();
  EXPECT_NE(log.find("op=kek.evict"), std::string::npos) << log;
  EXPECT_NE(log.find("shutdown"), std::string::npos) << log;
  for (int fd : idle) close(fd);
}

}  // namespace
}  // namespace vcrypt
