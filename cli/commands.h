// vcryptctl's command handlers (cli*.cc), for the files that implement
// them; not an interface for anything outside cli/. One class, Cli, holds
// the connection and the output streams; each command group is a member
// defined in its own file:
//   cli.cc           Run, dispatch, shared helpers, ParseSize, progress
//   cmd_provider.cc  provider ...
//   cmd_vm.cc        vm ..., volume ...
//   cmd_open.cc      open, close, unlock, status, cache, probe
//   cmd_attach.cc    attach/detach; in library vcrypt_cli_attach, as it
//                    links libvirt (cli/attach.h)
#ifndef VCRYPT_CLI_COMMANDS_H_
#define VCRYPT_CLI_COMMANDS_H_

#include <sys/types.h>

#include <boost/program_options.hpp>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "client/client.h"
#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt::cli_internal {

namespace po = boost::program_options;
using Json = nlohmann::json;

// kUsage with " (see 'vcryptctl --help')" appended to `msg`.
Error UsageError(const std::string& msg);

// Parsed sub-command: positional words plus its own options.
struct Sub {
  std::vector<std::string> words;
  po::variables_map vm;
};

// Parses `args` against `opts`; between min_words and max_words
// positional words, else a usage error naming `what`.
Result<Sub> ParseSub(const std::vector<std::string>& args,
                     const po::options_description& opts, size_t min_words,
                     size_t max_words, const std::string& what);

// A secret file (password, private key) read straight into locked memory;
// with strip_newline one trailing newline goes, so `echo pw > file` works.
// The largest provider backup (PKCS#12) `provider restore -` reads from
// stdin; a native provider's is about 3 KiB.
inline constexpr size_t kMaxBackupSize = 64 << 10;
// All of stdin, at most `max` bytes: kInvalidArgument naming `what` when
// it is larger or empty, kIo when it cannot be read.
Result<std::string> ReadStdin(size_t max, const std::string& what);
Result<SecureBuffer> ReadSecretFile(const std::string& path,
                                    const std::string& what,
                                    bool strip_newline);
Result<SecureBuffer> ReadPasswordFile(const std::string& path);

// Writes `data` as the new file `path` (mode `mode`), whole or not at all,
// never over an existing file (kExists).
Status WriteNewFile(const std::string& path, std::span<const uint8_t> data,
                    mode_t mode);

// "VM/DISK" -> {vm, disk}; "/abs/path" -> {path}; else a usage error.
Result<Json> TargetArgs(const std::string& t);

// A JSON value as a table cell: strings bare, null "-".
std::string Str(const Json& j);
void PrintTable(std::ostream& out, const Json& rows,
                const std::vector<std::pair<std::string, std::string>>& cols);
void PrintObject(std::ostream& out, const Json& obj,
                 const std::string& indent = "");
// What a volume's state rests on: its mapping, or why it is not open.
std::string StateDetail(const Json& d);

class Cli {
 public:
  Cli(std::ostream& out, std::ostream& err) : out_(out), err_(err) {}
  int Run(int argc, const char* const* argv);

  // How attach/detach run: a member defined in another library (see
  // cli/attach.h), or, left null, by exec'ing vcrypt-attach.
  using AttachFn = Status (Cli::*)(const std::string& cmd,
                                   const std::vector<std::string>& a);
  void set_attach(AttachFn f) { attach_ = f; }
  Status AttachDetach(const std::string& cmd,
                      const std::vector<std::string>& a);

 private:
  Result<Json> Call(const std::string& op, const Json& args,
                    const SecureBuffer* secret = nullptr,
                    SecureBuffer* reply_secret = nullptr,
                    const std::function<void(const Json&)>& on_event = {}) {
    if (!client_) {
      VCRYPT_ASSIGN_OR_RETURN(Client c, Client::Connect(socket_));
      client_.emplace(std::move(c));
    }
    return client_->Call(op, args, secret, reply_secret, on_event);
  }
  Status Dispatch(const std::string& cmd, const std::vector<std::string>& rest);
  Status Provider(const std::vector<std::string>& a);
  Status Vm(const std::vector<std::string>& a);
  Status Volume(const std::vector<std::string>& a);
  Status OpenClose(const std::string& cmd, const std::vector<std::string>& a);
  Status OpenAll(bool file_backed, bool automatic);
  Status StatusCmd(const std::vector<std::string>& a);
  Status Cache(const std::vector<std::string>& a);
  Status Probe(const std::vector<std::string>& a);
  Status Unlock(const std::vector<std::string>& a);
  // Replaces the process with vcrypt-attach, given this run's argv;
  // returns only the error if it cannot.
  Status ExecAttachHelper();
  // Prints `j` as JSON with --json, else with `human`.
  template <typename F>
  void Print(const Json& j, F human) {
    if (json_)
      out_ << j.dump(2) << "\n";
    else
      human(j);
  }

  std::ostream& out_;
  std::ostream& err_;
  std::string socket_ = "/run/vcrypt/vcryptd.sock";
  bool json_ = false;
  std::optional<Client> client_;
  AttachFn attach_ = nullptr;
  std::vector<const char*> argv_;  // this run's, for ExecAttachHelper
};

}  // namespace vcrypt::cli_internal

#endif  // VCRYPT_CLI_COMMANDS_H_
