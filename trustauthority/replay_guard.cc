#include "trustauthority/replay_guard.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <system_error>

#include "common/atomic_file.h"
#include "common/hex.h"
#include "common/random.h"

namespace vcrypt {
namespace {

std::string HexSha256(std::string_view data) {
  std::array<uint8_t, EVP_MAX_MD_SIZE> md{};
  unsigned int md_len = 0;
  // SHA-256 of a few bytes only fails if the library is broken; an empty
  // name would then make every id collide, so it is checked by the caller.
  if (EVP_Digest(data.data(), data.size(), md.data(), &md_len, EVP_sha256(),
                 nullptr) != 1) {
    ERR_clear_error();
    return {};
  }
  return HexEncode(std::span<const uint8_t>(md.data(), md_len));
}

bool IsEntryName(std::string_view name) {
  if (name.size() != 64) return false;
  for (char c : name) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

constexpr std::string_view kTempPrefix = "tmp.";
// A temporary file lives for the few milliseconds of one ConsumeOnce; one
// this old was left by a crash.
constexpr int64_t kStaleTempSeconds = 600;

Error IoError(const std::string& what, int err) {
  return MakeError(ErrorCode::kIo, what + ": " + std::strerror(err));
}

Status WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return IoError("replay guard: write", n < 0 ? errno : EIO);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

// The decimal expiry stored in an entry, or nullopt if it is not one.
std::optional<int64_t> ReadEntryExpiry(int dir_fd, const std::string& name) {
  UniqueFd fd(
      ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return std::nullopt;
  char buf[32];
  ssize_t n;
  do {
    n = ::read(fd.get(), buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  if (n <= 0 || n == static_cast<ssize_t>(sizeof(buf))) return std::nullopt;
  std::string_view text(buf, static_cast<size_t>(n));
  if (text.back() != '\n') return std::nullopt;
  text.remove_suffix(1);
  bool negative = !text.empty() && text.front() == '-';
  if (negative) text.remove_prefix(1);
  if (text.empty() || text.size() > 19) return std::nullopt;
  int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    if (__builtin_mul_overflow(v, 10, &v) ||
        __builtin_add_overflow(v, c - '0', &v)) {
      return std::nullopt;
    }
  }
  return negative ? -v : v;
}

}  // namespace

Result<ReplayGuard> ReplayGuard::Open(const std::string& dir,
                                      std::chrono::seconds grace) {
  if (dir.empty() || grace.count() < 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "replay guard needs a directory and grace >= 0");
  }
  VCRYPT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return IoError("replay guard: open " + dir, errno);
  return ReplayGuard(dir, std::move(fd), grace);
}

Result<bool> ReplayGuard::ConsumeOnce(std::string_view id, int64_t exp_unix) {
  if (id.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "replay guard: empty id");
  }
  const std::string name = HexSha256(id);
  if (name.empty()) {
    return MakeError(ErrorCode::kInternal, "replay guard: SHA-256 failed");
  }
  std::array<uint8_t, 16> rnd{};
  VCRYPT_RETURN_IF_ERROR(FillRandom(rnd));
  const std::string tmp = std::string(kTempPrefix) + HexEncode(rnd);

  {
    UniqueFd fd(::openat(dir_fd_.get(), tmp.c_str(),
                         O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                         0600));
    if (!fd.valid()) return IoError("replay guard: create in " + dir_, errno);
    Status st = WriteAll(fd.get(), std::to_string(exp_unix) + "\n");
    if (st.ok() && ::fsync(fd.get()) != 0) {
      st = IoError("replay guard: fsync in " + dir_, errno);
    }
    if (!st.ok()) {
      ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
      return std::move(st).error();
    }
  }

  bool first = false;
  if (::linkat(dir_fd_.get(), tmp.c_str(), dir_fd_.get(), name.c_str(), 0) ==
      0) {
    first = true;
  } else if (errno == EEXIST) {
    // Over NFS a retransmitted LINK can report EEXIST for a link that did
    // succeed; the temporary name's link count tells (nobody else links
    // it, its name is random).
    struct stat st {};
    first =
        ::fstatat(dir_fd_.get(), tmp.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        st.st_nlink == 2;
  } else {
    int err = errno;
    ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
    return IoError("replay guard: link in " + dir_, err);
  }
  ::unlinkat(dir_fd_.get(), tmp.c_str(), 0);
  // Make the new name durable before the caller acts on the id, or a crash
  // could forget that it was used.
  if (first && ::fsync(dir_fd_.get()) != 0) {
    return IoError("replay guard: fsync " + dir_, errno);
  }
  return first;
}

Status ReplayGuard::Purge(std::chrono::system_clock::time_point now) {
  const int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch())
          .count();
  std::error_code ec;
  std::filesystem::directory_iterator it(dir_, ec), end;
  std::optional<Error> first_error;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    bool remove = false;
    if (IsEntryName(name)) {
      std::optional<int64_t> exp = ReadEntryExpiry(dir_fd_.get(), name);
      int64_t until = 0;
      remove = exp.has_value() &&
               !__builtin_add_overflow(*exp, grace_.count(), &until) &&
               until < now_s;
    } else if (name.starts_with(kTempPrefix)) {
      struct stat st {};
      remove = ::fstatat(dir_fd_.get(), name.c_str(), &st,
                         AT_SYMLINK_NOFOLLOW) == 0 &&
               st.st_mtime < now_s - kStaleTempSeconds;
    }
    // Another replica may purge the same entry at the same time: ENOENT
    // is success.
    if (remove && ::unlinkat(dir_fd_.get(), name.c_str(), 0) != 0 &&
        errno != ENOENT && !first_error) {
      first_error = IoError("replay guard: remove " + dir_ + "/" + name, errno);
    }
  }
  if (ec)
    return MakeError(ErrorCode::kIo,
                     "replay guard: list " + dir_ + ": " + ec.message());
  if (first_error) return *first_error;
  return Status::Ok();
}

}  // namespace vcrypt
