// Finding a companion program of vcrypt by its place relative to the
// running program (/proc/self/exe), never through $PATH or the
// environment: a root program must not be redirected to another binary.
#ifndef VCRYPT_COMMON_SIBLING_PROGRAM_H_
#define VCRYPT_COMMON_SIBLING_PROGRAM_H_

#include <string>
#include <string_view>

#include "common/result.h"

namespace vcrypt {

// The path of program `name`: next to the running program (the build
// tree), else `installed_relpath` relative to the running program's
// directory (the installed layout, e.g. "../libexec/vcrypt/vcrypt-attach"),
// whichever is executable first. kInternal when the running program's path
// cannot be read; kNotFound ("no program <dir><installed_relpath>
// (install vcrypt completely)") when neither exists.
Result<std::string> FindSiblingProgram(std::string_view name,
                                       std::string_view installed_relpath);

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_SIBLING_PROGRAM_H_
