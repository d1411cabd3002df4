#include "common/sibling_program.h"

#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace vcrypt {

Result<std::string> FindSiblingProgram(std::string_view name,
                                       std::string_view installed_relpath) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0)
    return MakeError(ErrorCode::kInternal,
                     std::string("cannot find this program's own path: ") +
                         std::strerror(errno));
  std::string dir(self, static_cast<size_t>(n));
  dir.erase(dir.rfind('/') + 1);
  for (std::string_view rel : {name, installed_relpath}) {
    std::string path = dir + std::string(rel);
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return MakeError(ErrorCode::kNotFound, "no program " + dir +
                                             std::string(installed_relpath) +
                                             " (install vcrypt completely)");
}

}  // namespace vcrypt
