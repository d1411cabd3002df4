// vcryptctl's program logic, in the library so tests can drive it.
#ifndef VCRYPT_CLI_CLI_H_
#define VCRYPT_CLI_CLI_H_

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace vcrypt {

// Runs one vcryptctl command. Results go to `out`; an error is one line
// "vcryptctl: <message>" on `err`. Returns the exit code (0, or the
// ErrorCode value: see README.md "Exit codes").
// `attach` and `detach` need libvirt, which this library does not link:
// for them RunCli flushes `out` and `err` and replaces the process with
// the helper vcrypt-attach (cli/attach.h), passing `argv` unchanged; it
// returns only if that fails (exit code 1, kInternal). The helper is
// looked for next to the running program (the build tree), then at
// VCRYPT_ATTACH_HELPER_RELPATH from it (the installed layout,
// ../libexec/vcrypt/vcrypt-attach from sbin): both relative to the
// program, so an installed tree can be moved and no environment variable
// can redirect a root vcryptctl to another program.
int RunCli(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

// "64M", "1G", "4096", "10MiB" -> bytes (binary units). kInvalidArgument
// on anything else, on zero, and on overflow.
Result<uint64_t> ParseSize(std::string_view text);

// Shows the progress events of `vm rekey` (docs/protocol.md, "Events") on
// a terminal: a line per disk, redrawn in place with '\r' while its bytes
// move and ended with the disk's result:
//   vm1/disk0  [##########----------]  50%  150/300 MiB
//   vm1/disk0  rekeyed
// A line still to be redrawn is cut to `columns` - 1 characters: once
// wrapped, '\r' would only go back to its last row.
class ProgressRenderer {
 public:
  ProgressRenderer(std::ostream& out, size_t columns);
  // Unknown event types are ignored: a newer daemon may send more.
  void OnEvent(const nlohmann::json& event);
  // Ends a line left open (the answer, or a lost connection, came before
  // the disk's disk.done), so what follows starts on a line of its own.
  void Finish();

  // The progress line of one disk. A total of 0 (nothing to copy) is
  // complete.
  static std::string ProgressLine(const std::string& label, uint64_t done,
                                  uint64_t total);

 private:
  // Writes `line` over the open line of `label`; `end` ends it.
  void Draw(const std::string& label, std::string line, bool end);

  std::ostream& out_;
  size_t columns_;
  bool open_ = false;
  std::string open_label_;
  size_t open_len_ = 0;
};

}  // namespace vcrypt

#endif  // VCRYPT_CLI_CLI_H_
