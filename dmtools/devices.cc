// Block devices, regular files and loop devices as stat(2) and sysfs
// describe them. No libcryptsetup/libdevmapper calls: nothing here needs
// the library lock.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "dmtools/lib_internal.h"

namespace vcrypt::dmlib {
namespace {

namespace fs = std::filesystem;

// Whether the whole disk behind a block device number is non-rotational;
// nullopt when sysfs does not say.
std::optional<bool> NonRotationalDev(dev_t dev) {
  std::string base = SysDevBlock(dev);
  std::error_code ec;
  if (!fs::exists(base, ec)) return std::nullopt;
  // Partitions have no queue/ of their own; the disk is the parent.
  if (fs::exists(base + "/partition", ec)) base += "/..";
  auto rot = ReadSmallFile(base + "/queue/rotational");
  if (!rot) return std::nullopt;
  if (*rot == "0") return true;
  if (*rot == "1") return false;
  return std::nullopt;
}

// The block device a file system with an anonymous st_dev (btrfs, for
// instance) was mounted from, via /proc/self/mountinfo.
std::optional<dev_t> MountSourceDevice(dev_t st_dev) {
  std::ifstream in("/proc/self/mountinfo");
  std::string want =
      std::to_string(major(st_dev)) + ":" + std::to_string(minor(st_dev));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, majmin;
    ls >> id >> parent >> majmin;
    if (majmin != want) continue;
    size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream rest(line.substr(sep + 3));
    std::string fstype, source;
    rest >> fstype >> source;
    if (source.rfind("/dev/", 0) != 0) return std::nullopt;
    struct stat st;
    if (stat(source.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) {
      return std::nullopt;
    }
    return st.st_rdev;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string SysDevBlock(dev_t dev) {
  return "/sys/dev/block/" + std::to_string(major(dev)) + ":" +
         std::to_string(minor(dev));
}

// /dev/<kernel name> of a block device number, from its uevent.
std::string DevicePathOf(dev_t dev) {
  if (auto uevent = ReadSmallFile(SysDevBlock(dev) + "/uevent")) {
    std::istringstream in(*uevent);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("DEVNAME=", 0) == 0) return "/dev/" + line.substr(8);
    }
  }
  return "";
}

// True/false when the storage under `device` (a block device, or the file
// system a regular file lives on) is known to be non-rotational or
// rotational; nullopt when it cannot be told (tmpfs, overlayfs, network
// file systems).
std::optional<bool> IsNonRotational(const std::string& device) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) return std::nullopt;
  if (S_ISBLK(st.st_mode)) return NonRotationalDev(st.st_rdev);
  if (!S_ISREG(st.st_mode)) return std::nullopt;
  if (major(st.st_dev) != 0) return NonRotationalDev(st.st_dev);
  if (auto src = MountSourceDevice(st.st_dev)) return NonRotationalDev(*src);
  return std::nullopt;
}

// The loop devices whose backing file is the inode (dev, ino): compared
// by inode, not by name, so no alias of the path (a link, a rename) hides
// one.
std::vector<std::string> LoopDevicesBackedBy(dev_t dev, ino_t ino) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/block", ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind("loop", 0) != 0) continue;
    auto f = ReadSmallFile(e.path().string() + "/loop/backing_file");
    struct stat st;
    if (f && stat(f->c_str(), &st) == 0 && st.st_dev == dev && st.st_ino == ino)
      out.push_back("/dev/" + n);
  }
  return out;
}

Result<DeviceGeometry> Geometry(const std::string& device) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return MakeError(ErrorCode::kNotFound,
                       "device or file " + device + " does not exist");
    }
    return MakeError(ErrorCode::kIo,
                     "cannot stat " + device + ": " + ErrnoText(errno));
  }
  DeviceGeometry g;
  if (S_ISREG(st.st_mode)) {
    g.size = static_cast<uint64_t>(st.st_size);
    return g;
  }
  if (!S_ISBLK(st.st_mode)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " is neither a block device nor a regular file");
  }
  g.is_block = true;
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return MakeError(ErrorCode::kIo,
                     "cannot open " + device + ": " + ErrnoText(errno));
  }
  uint64_t size = 0;
  int lbs = 0;
  if (ioctl(fd.get(), BLKGETSIZE64, &size) != 0 ||
      ioctl(fd.get(), BLKSSZGET, &lbs) != 0) {
    return MakeError(ErrorCode::kIo, "cannot get the size of " + device + ": " +
                                         ErrnoText(errno));
  }
  g.size = size;
  g.logical_block = static_cast<uint32_t>(lbs);
  return g;
}

}  // namespace vcrypt::dmlib
