// Atomic replacement of small state files.
//
// WriteFileAtomic writes to a temporary file in the same directory,
// fsyncs it, renames it over the target and fsyncs the directory. A crash
// at any point leaves either the complete old file or the complete new
// one, never a mix; a stray "<name>.tmp.XXXXXX" may remain and is ignored
// by readers. Such leftovers are removed once they are over a minute old
// (a younger one may be another writer's, in progress) by a later
// successful write into the same directory: the first one of each
// process, then one a minute at most, so that a write does not list its
// whole directory each time. Concurrent writers of one file (threads, or
// processes sharing the directory) each get a complete file in turn.
#ifndef VCRYPT_COMMON_ATOMIC_FILE_H_
#define VCRYPT_COMMON_ATOMIC_FILE_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "common/result.h"

namespace vcrypt {

struct AtomicWriteOptions {
  mode_t mode = 0600;
  // Test hook: runs after the temp file is fully written and fsynced and
  // before the rename. A test can _exit() here to simulate a crash.
  std::function<void()> before_rename;
};

Status WriteFileAtomic(const std::string& path,
                       std::span<const uint8_t> contents,
                       const AtomicWriteOptions& options = {});
Status WriteFileAtomic(const std::string& path, const std::string& contents,
                       const AtomicWriteOptions& options = {});

// Creates `path` with `contents` unless something is there already: the
// file appears whole or not at all (a temporary file, fsync, link(2), an
// fsync of the directory), and of several writers - threads, or processes
// sharing the directory - exactly one succeeds; the others get kExists
// and nothing of theirs remains. With `owner` (a uid and gid), the file
// is given to it before it appears.
Status CreateFileOnce(const std::string& path,
                      std::span<const uint8_t> contents, mode_t mode = 0600,
                      std::optional<std::pair<uid_t, gid_t>> owner = {});

// Reads a whole (small) file. kNotFound if it does not exist.
Result<std::string> ReadFile(const std::string& path);

// mkdir -p with the given mode for created components.
Status MakeDirs(const std::string& path, mode_t mode = 0700);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_ATOMIC_FILE_H_
