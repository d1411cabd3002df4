// vcrypt-libvirt-hook: the libvirt qemu hook (libvirt/hook.h). Thin main:
// reads the domain XML from stdin, prints the hook's lines on stderr.
//
// `release end -` (libvirt < 10.5 says not why the domain stopped) leaves
// a watcher behind: this program again, detached (own session, stdio on
// /dev/null: libvirtd reads the hook's output until every copy of it is
// closed), as
//   vcrypt-libvirt-hook --watch-release SOCKET DOMAIN VM...
// It asks libvirtd, once libvirtd is done with the domain, whether it
// migrated away (libvirt/hook.h, RunReleaseWatch), and logs to syslog.
#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "common/names.h"
#include "libvirt/connection.h"
#include "libvirt/hook.h"
#include "libvirt/volumes.h"

namespace {

// All of stdin, at most `limit` bytes; false if there is more or a read
// fails.
bool ReadStdin(std::string* out, size_t limit) {
  char buf[65536];
  for (;;) {
    ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) return true;
    out->append(buf, static_cast<size_t>(r));
    if (out->size() > limit) return false;
  }
}

// Starts the watcher, detached; errors are the hook's to report.
bool SpawnWatcher(const std::string& socket, const std::string& domain,
                  const std::vector<std::string>& vms) {
  std::vector<std::string> args = {"vcrypt-libvirt-hook", "--watch-release",
                                   socket, domain};
  args.insert(args.end(), vms.begin(), vms.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    if (setsid() < 0) _exit(1);
    pid_t again = fork();
    if (again != 0) _exit(again < 0 ? 1 : 0);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) _exit(1);
    for (int fd = 0; fd < 3; ++fd)
      if (dup2(null, fd) < 0) _exit(1);
    closefrom(3);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int WatchRelease(const std::vector<std::string>& args) {
  using namespace vcrypt;
  openlog("vcrypt-libvirt-hook", LOG_PID, LOG_DAEMON);
  // --watch-release SOCKET DOMAIN VM...
  if (args.size() < 4 || args[1].empty() || args[1][0] != '/') return 2;
  const std::string& domain = args[2];
  std::vector<std::string> vms(args.begin() + 3, args.end());
  for (const auto& vm : vms)
    if (!ValidateVmName(vm).ok()) return 2;
  auto lv = Libvirt::Connect(kDefaultLibvirtUri);
  if (!lv.ok()) {
    syslog(LOG_WARNING, "%s", lv.error().message.c_str());
    return 1;
  }
  auto state = [&]() -> Result<std::optional<DomainStateNow>> {
    auto dom = lv->LookupDomain(domain);
    if (!dom.ok()) {
      if (dom.error().code == ErrorCode::kNotFound)
        return std::optional<DomainStateNow>();
      return std::move(dom).error();
    }
    VCRYPT_ASSIGN_OR_RETURN(LibvirtDomain::State st, dom->GetState());
    return std::optional<DomainStateNow>(DomainStateNow{st.state, st.reason});
  };
  DaemonVolumes vols(args[1]);
  for (const auto& line :
       RunReleaseWatch(domain, vms, state, vols, std::chrono::seconds(30)))
    syslog(LOG_NOTICE, "%s", line.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace vcrypt;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "--watch-release") return WatchRelease(args);
  auto parsed = ParseHookArgs(args);
  if (!parsed.ok()) {
    std::cerr << "vcrypt: " << parsed.error().message << "\n";
    return static_cast<int>(parsed.error().code);
  }
  const HookArgs& a = *parsed;
  // Most calls (start, started, stopped, reconnect, ...) need nothing.
  if (HookActionFor(a.operation, a.sub_operation) == HookAction::kNone)
    return 0;
  std::string xml;
  if (!ReadStdin(&xml, kMaxHookXmlSize)) {
    std::cerr << "vcrypt: cannot read the XML of domain " << a.domain
              << " from stdin (unreadable or larger than " << kMaxHookXmlSize
              << " bytes)\n";
    return static_cast<int>(ErrorCode::kIo);
  }
  DaemonVolumes vols(a.socket);
  HookOutcome out = RunHook(a, xml, vols);
  if (!out.watch_vms.empty() &&
      !SpawnWatcher(a.socket, a.domain, out.watch_vms))
    out.messages.push_back(
        "vcrypt: cannot start the watcher that confirms "
        "whether domain " +
        a.domain + " migrated away");
  for (const auto& m : out.messages) std::cerr << m << "\n";
  return out.exit_code;
}
