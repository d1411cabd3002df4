#include "dmtools/responsive.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "common/handles.h"

namespace vcrypt {
namespace {

using Clock = std::chrono::steady_clock;

struct Probe {
  Clock::time_point started;
  bool done = false;
};

// Devices by (st_dev, st_ino) of their node or file: a read in flight for
// each. Leaked on purpose: a stuck probe thread may outlive static
// destruction.
std::mutex& Mu() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::condition_variable& Cv() {
  static auto* cv = new std::condition_variable;
  return *cv;
}
std::map<std::pair<dev_t, ino_t>, std::shared_ptr<Probe>>& InFlight() {
  static auto* m =
      new std::map<std::pair<dev_t, ino_t>, std::shared_ptr<Probe>>;
  return *m;
}

void ReadFirstBlock(const std::string& device, bool block) {
  UniqueFd fd(open(device.c_str(),
                   O_RDONLY | O_CLOEXEC | O_NONBLOCK | (block ? O_DIRECT : 0)));
  if (!fd.valid() && block)
    fd.reset(open(device.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) return;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, 4096) != 0) return;
  (void)!pread(fd.get(), buf, 4096, 0);
  free(buf);
}

}  // namespace

Status CheckResponsive(const std::string& device,
                       std::chrono::milliseconds timeout) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) return Status::Ok();
  const bool block = S_ISBLK(st.st_mode);
  if (!block && !S_ISREG(st.st_mode)) return Status::Ok();
  const auto key = std::make_pair(st.st_dev, st.st_ino);

  std::unique_lock lock(Mu());
  std::shared_ptr<Probe> probe;
  if (auto it = InFlight().find(key); it != InFlight().end()) {
    probe = it->second;
  } else {
    probe = std::make_shared<Probe>();
    probe->started = Clock::now();
    try {
      std::thread([device, block, key, probe] {
        ReadFirstBlock(device, block);
        std::lock_guard l(Mu());
        probe->done = true;
        InFlight().erase(key);
        Cv().notify_all();
      }).detach();
    } catch (const std::system_error&) {
      return Status::Ok();  // no thread to spare: go on without the check
    }
    InFlight().emplace(key, probe);
  }
  if (Cv().wait_until(lock, probe->started + timeout,
                      [&] { return probe->done; }))
    return Status::Ok();
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() -
                                                               probe->started);
  return MakeError(ErrorCode::kIo,
                   device +
                       " does not respond: a read of it has been pending for " +
                       std::to_string(secs.count()) +
                       " s (is it or a device under it suspended?)");
}

}  // namespace vcrypt
