#include "daemon/roles.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace vcrypt {
namespace {

using Json = nlohmann::json;

Error Denied(const std::string& why) {
  return MakeError(ErrorCode::kPermissionDenied, why);
}

// Absolute, no empty, "." or ".." component, no trailing '/'.
bool LexicallyNormal(const std::string& p) {
  if (p.empty() || p[0] != '/') return false;
  if (p == "/") return true;
  if (p.back() == '/') return false;
  size_t i = 1;
  while (i <= p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string::npos) j = p.size();
    std::string_view c(p.data() + i, j - i);
    if (c.empty() || c == "." || c == "..") return false;
    i = j + 1;
  }
  return true;
}

std::string RealPath(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

bool Under(const std::string& p, const std::string& dir) {
  if (dir == "/") return p.size() > 1 && p[0] == '/';
  return p.size() > dir.size() && p.compare(0, dir.size(), dir) == 0 &&
         p[dir.size()] == '/';
}

// `dir` (a resolved directory) is root's: owned by uid 0 and writable by
// nobody else; `sticky_ok` also accepts a group/world-writable sticky
// directory (others can add entries there but not rename ours).
bool RootOnly(const std::string& dir, bool sticky_ok) {
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  if (st.st_uid != 0) return false;
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0) return true;
  return sticky_ok && (st.st_mode & S_ISVTX);
}

}  // namespace

std::string_view RoleName(Role r) {
  switch (r) {
    case Role::kMonitor:
      return "monitor";
    case Role::kOperator:
      return "operator";
    case Role::kRoot:
      return "root";
  }
  return "?";
}

Role RaiseForArguments(const std::string& op, const Json& args, Role least) {
  if (op == "vm.rekey" && args.is_object()) {
    // A provider change re-homes the KEK, revoke_old destroys the old one.
    // Any value counts: what the op would make of it is not this table's
    // business.
    if (args.contains("provider") || args.contains("revoke_old"))
      return Role::kRoot;
  }
  return least;
}

Status CheckOperatorVolumePath(const std::string& path, bool is_file,
                               const std::vector<std::string>& allowed_dirs) {
  if (allowed_dirs.empty())
    return Denied(
        "volume create is root's unless vcryptd's config lists volume_paths "
        "for the operator group");
  if (!LexicallyNormal(path))
    return Denied("'" + path +
                  "' is not a plain absolute path (no '.', '..' or '//'): "
                  "the operator group may only name paths under volume_paths");
  const std::string* dir = nullptr;
  for (const auto& d : allowed_dirs)
    if (Under(path, d)) dir = &d;
  if (dir == nullptr)
    return Denied(path + " is not under a directory of vcryptd's volume_paths");
  const std::string parent = path.substr(0, path.rfind('/'));
  const std::string real_dir = RealPath(*dir);
  const std::string real_parent = RealPath(parent.empty() ? "/" : parent);
  if (real_dir.empty() || real_parent.empty())
    return MakeError(
        ErrorCode::kNotFound,
        "directory " + (real_dir.empty() ? *dir : parent) + " does not exist");
  if (real_parent != real_dir && !Under(real_parent, real_dir))
    return Denied(parent + " leads out of " + *dir + " (a symlink)");
  // Nobody but root may add or rename entries on the way: from / down to
  // the allowed directory sticky directories are fine (as /tmp), from it
  // down to the path's directory only root-writable ones.
  for (std::string d = real_parent;; d = d.substr(0, d.rfind('/'))) {
    if (d.empty()) d = "/";
    bool inside = d == real_dir || Under(d, real_dir);
    if (!RootOnly(d, /*sticky_ok=*/!inside))
      return Denied(d +
                    " is writable by others than root; volume_paths "
                    "must be root's alone");
    if (d == "/") break;
  }
  if (!is_file) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0)
      return MakeError(ErrorCode::kNotFound,
                       "device " + path + " does not exist");
    if (!S_ISBLK(st.st_mode))
      return Denied(path +
                    " is not a block device (the operator group formats "
                    "block devices, or new image files with --file)");
  }
  return Status::Ok();
}

}  // namespace vcrypt
