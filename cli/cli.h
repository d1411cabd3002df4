// vcryptctl's program logic, in the library so tests can drive it.
#ifndef VCRYPT_CLI_CLI_H_
#define VCRYPT_CLI_CLI_H_

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>

#include "common/result.h"

namespace vcrypt {

// Runs one vcryptctl command. Results go to `out`; an error is one line
// "vcryptctl: <message>" on `err`. Returns the exit code (0, or the
// ErrorCode value: see README.md "Exit codes").
int RunCli(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

// "64M", "1G", "4096", "10MiB" -> bytes (binary units). kInvalidArgument
// on anything else, on zero, and on overflow.
Result<uint64_t> ParseSize(std::string_view text);

}  // namespace vcrypt

#endif  // VCRYPT_CLI_CLI_H_
