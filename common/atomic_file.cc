#include "common/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "common/handles.h"

namespace vcrypt {
namespace {

Error ErrnoError(ErrorCode code, const std::string& what, int err) {
  return MakeError(code, what + ": " + std::strerror(err));
}

std::string DirName(const std::string& path) {
  auto pos = path.rfind('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

Status WriteAll(int fd, const uint8_t* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(ErrorCode::kIo, "cannot write " + path, errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

// A temporary file older than this is a leftover: a write takes
// milliseconds, so one this old was left by a writer that died (or lost
// its file system). Younger ones may be another thread's or replica's
// write in progress and are never touched.
constexpr auto kStaleAfter = std::chrono::seconds(60);

// Whether this process should sweep `dir` now: at its first write there,
// then at most once per kStaleAfter. Listing the directory on every write
// made each write cost O(files in it) (issue 13: the Trust Authority's
// per-host and per-challenge directories).
bool SweepDue(const std::string& dir) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::chrono::steady_clock::time_point>
      last;
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mu);
  auto [it, inserted] = last.try_emplace(dir, now);
  if (inserted) return true;
  if (now - it->second < kStaleAfter) return false;
  it->second = now;
  return true;
}

// Removes temporary files of WriteFileAtomic ("<name>.tmp.XXXXXX") in
// `dir` whose last change is over kStaleAfter ago.
void RemoveStaleTemps(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  const auto cutoff = std::chrono::system_clock::now() - kStaleAfter;
  while (dirent* e = readdir(d)) {
    std::string_view n(e->d_name);
    auto pos = n.rfind(".tmp.");
    if (pos == std::string_view::npos || pos == 0 || n.size() - pos != 5 + 6)
      continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode))
      continue;
    const auto mtime = std::chrono::system_clock::time_point(
        std::chrono::seconds(st.st_mtim.tv_sec));
    if (mtime < cutoff) unlinkat(dirfd(d), e->d_name, 0);
  }
  closedir(d);
}

// A temporary file beside `path` holding `contents`, with `mode` (and
// `owner`), written and fsynced: what WriteFileAtomic renames and
// CreateFileOnce links into place. Its name, or an error with nothing
// left behind.
Result<std::string> WriteTempFile(
    const std::string& path, std::span<const uint8_t> contents, mode_t mode,
    std::optional<std::pair<uid_t, gid_t>> owner) {
  std::string tmp = path + ".tmp.XXXXXX";  // mkostemp's template
  UniqueFd fd(mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd.valid())
    return ErrnoError(ErrorCode::kIo,
                      "cannot create temporary file in " + DirName(path),
                      errno);
  auto fail = [&](Error e) -> Error {
    ::unlink(tmp.c_str());
    return e;
  };
  if (fchmod(fd.get(), mode) != 0)
    return fail(ErrnoError(ErrorCode::kIo, "cannot chmod " + tmp, errno));
  if (owner && fchown(fd.get(), owner->first, owner->second) != 0)
    return fail(ErrnoError(ErrorCode::kIo, "cannot chown " + tmp, errno));
  if (auto st = WriteAll(fd.get(), contents.data(), contents.size(), tmp);
      !st.ok())
    return fail(std::move(st).error());
  if (fsync(fd.get()) != 0)
    return fail(ErrnoError(ErrorCode::kIo, "cannot fsync " + tmp, errno));
  return tmp;
}

}  // namespace

Status WriteFileAtomic(const std::string& path,
                       std::span<const uint8_t> contents,
                       const AtomicWriteOptions& options) {
  const std::string dir = DirName(path);
  VCRYPT_ASSIGN_OR_RETURN(std::string tmp,
                          WriteTempFile(path, contents, options.mode, {}));
  auto fail = [&](Error e) -> Status {
    ::unlink(tmp.c_str());
    return e;
  };
  if (options.before_rename) options.before_rename();
  if (rename(tmp.c_str(), path.c_str()) != 0)
    return fail(
        ErrnoError(ErrorCode::kIo, "cannot rename onto " + path, errno));
  UniqueFd dfd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd.valid() || fsync(dfd.get()) != 0)
    return ErrnoError(ErrorCode::kIo, "cannot fsync directory " + dir, errno);
  if (SweepDue(dir)) RemoveStaleTemps(dir);
  return Status::Ok();
}

Status WriteFileAtomic(const std::string& path, const std::string& contents,
                       const AtomicWriteOptions& options) {
  return WriteFileAtomic(
      path,
      std::span<const uint8_t>(
          reinterpret_cast<const uint8_t*>(contents.data()), contents.size()),
      options);
}

Status CreateFileOnce(const std::string& path,
                      std::span<const uint8_t> contents, mode_t mode,
                      std::optional<std::pair<uid_t, gid_t>> owner) {
  const std::string dir = DirName(path);
  VCRYPT_ASSIGN_OR_RETURN(std::string tmp,
                          WriteTempFile(path, contents, mode, owner));
  auto fail = [&](Error e) -> Status {
    ::unlink(tmp.c_str());
    return e;
  };
  if (link(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    return fail(err == EEXIST
                    ? MakeError(ErrorCode::kExists, path + " exists already")
                    : ErrnoError(ErrorCode::kIo, "cannot create " + path, err));
  }
  ::unlink(tmp.c_str());
  UniqueFd dfd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd.valid() || fsync(dfd.get()) != 0)
    return ErrnoError(ErrorCode::kIo, "cannot fsync directory " + dir, errno);
  return Status::Ok();
}

Result<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    int err = errno;
    return ErrnoError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                      "cannot open " + path, err);
  }
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(ErrorCode::kIo, "cannot read " + path, errno);
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

Status MakeDirs(const std::string& path, mode_t mode) {
  if (path.empty()) return Status::Ok();
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty() && mkdir(cur.c_str(), mode) != 0 && errno != EEXIST)
      return ErrnoError(ErrorCode::kIo, "cannot create directory " + cur,
                        errno);
    i = j + 1;
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return MakeError(ErrorCode::kIo, path + " is not a directory");
  return Status::Ok();
}

}  // namespace vcrypt
