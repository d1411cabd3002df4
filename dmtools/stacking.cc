#include "dmtools/stacking.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "common/atomic_file.h"

namespace vcrypt {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxDepth = 16;
constexpr size_t kMaxDevices = 256;

bool StartsWith(const std::string& s, const char* prefix) {
  return s.rfind(prefix, 0) == 0;
}

// A sysfs attribute without its trailing newline.
Result<std::string> Attribute(const fs::path& p) {
  auto r = ReadFile(p.string());  // sysfs: at most a page
  if (!r.ok()) return MakeError(ErrorCode::kIo, r.error().message);
  std::string v = std::move(r).value();
  while (!v.empty() && (v.back() == '\n' || v.back() == '\0')) v.pop_back();
  return v;
}

struct Walk {
  std::set<fs::path> seen;

  // `dir`: the canonical sysfs directory of a block device.
  Result<std::optional<std::string>> Visit(const fs::path& dir, int depth) {
    if (depth > kMaxDepth)
      return MakeError(ErrorCode::kInvalidArgument,
                       "device stack under " + dir.string() +
                           " is deeper than " + std::to_string(kMaxDepth));
    if (!seen.insert(dir).second) return std::optional<std::string>();
    if (seen.size() > kMaxDevices)
      return MakeError(ErrorCode::kInvalidArgument,
                       "device stack has more than " +
                           std::to_string(kMaxDevices) + " devices");
    std::error_code ec;
    if (fs::is_directory(dir / "dm", ec)) {
      VCRYPT_ASSIGN_OR_RETURN(std::string name, Attribute(dir / "dm" / "name"));
      VCRYPT_ASSIGN_OR_RETURN(std::string uuid, Attribute(dir / "dm" / "uuid"));
      if (IsVcryptMapping(name, uuid)) return std::optional<std::string>(name);
    }
    // A partition's data is its disk's.
    if (fs::exists(dir / "partition", ec)) {
      VCRYPT_ASSIGN_OR_RETURN(auto below, Visit(dir.parent_path(), depth + 1));
      if (below) return below;
    }
    const fs::path slaves = dir / "slaves";
    if (!fs::is_directory(slaves, ec)) return std::optional<std::string>();
    fs::directory_iterator it(slaves, ec), end;
    if (ec)
      return MakeError(ErrorCode::kIo,
                       "cannot list " + slaves.string() + ": " + ec.message());
    for (; it != end; it.increment(ec)) {
      fs::path slave = fs::canonical(it->path(), ec);
      if (ec)
        return MakeError(
            ErrorCode::kIo,
            "cannot resolve " + it->path().string() + ": " + ec.message());
      VCRYPT_ASSIGN_OR_RETURN(auto below, Visit(slave, depth + 1));
      if (below) return below;
    }
    if (ec)
      return MakeError(ErrorCode::kIo,
                       "cannot list " + slaves.string() + ": " + ec.message());
    return std::optional<std::string>();
  }
};

// What the device `st` describes is stacked on; nullopt when it is not a
// block device.
Result<std::optional<std::string>> BelowStat(const struct stat& st,
                                             const std::string& sysfs_root) {
  if (!S_ISBLK(st.st_mode)) return std::optional<std::string>();
  return VcryptMappingBelow(std::to_string(major(st.st_rdev)) + ":" +
                                std::to_string(minor(st.st_rdev)),
                            sysfs_root);
}

}  // namespace

bool IsVcryptMapping(const std::string& dm_name, const std::string& dm_uuid) {
  return StartsWith(dm_name, "vcrypt-") && StartsWith(dm_uuid, "CRYPT-");
}

Result<std::optional<std::string>> VcryptMappingBelow(
    const std::string& dev_id, const std::string& sysfs_root) {
  const size_t colon = dev_id.find(':');
  if (dev_id.empty() || dev_id.size() > 21 || colon == std::string::npos ||
      colon == 0 || colon + 1 == dev_id.size() ||
      dev_id.find_first_not_of("0123456789:") != std::string::npos ||
      dev_id.find(':', colon + 1) != std::string::npos)
    return MakeError(ErrorCode::kInvalidArgument,
                     "not a MAJOR:MINOR device number: " + dev_id);
  const fs::path node = fs::path(sysfs_root) / "dev" / "block" / dev_id;
  std::error_code ec;
  fs::path dir = fs::canonical(node, ec);
  if (ec)
    return MakeError(ErrorCode::kNotFound, "no block device " + dev_id +
                                               " in " + sysfs_root + " (" +
                                               ec.message() + ")");
  Walk walk;
  return walk.Visit(dir, 0);
}

Result<std::optional<std::string>> VcryptMappingBelowPath(
    const std::string& path, const std::string& sysfs_root) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int e = errno;
    return MakeError(e == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                     "cannot stat " + path + ": " + std::strerror(e));
  }
  return BelowStat(st, sysfs_root);
}

Result<std::optional<std::string>> VcryptMappingBelowFd(
    int fd, const std::string& sysfs_root) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    return MakeError(ErrorCode::kIo, "cannot stat descriptor " +
                                         std::to_string(fd) + ": " +
                                         std::strerror(e));
  }
  return BelowStat(st, sysfs_root);
}

}  // namespace vcrypt
