// vcryptctl: the command line, dispatch to the command groups
// (cli/commands.h), the helpers they share, and the parts of cli.h.
#include "cli/cli.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <climits>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <vector>

#include "cli/commands.h"
#include "common/atomic_file.h"
#include "common/handles.h"
#include "common/sibling_program.h"
#include "common/wire.h"

namespace vcrypt {
namespace cli_internal {
namespace {

constexpr const char* kUsage =
    R"(Usage: vcryptctl [--socket PATH] [--json] COMMAND ...

Key providers:
  provider add native NAME [--tpm [--tcti TCTI] [--pcrs 0,7]]
                                       --tpm: primary key sealed to this
                                       host's TPM (TCTI default
                                       device:/dev/tpmrm0), bound to the
                                       PCRs' current values (SHA-256 bank)
  provider add standard NAME --kms HOST:PORT[,HOST:PORT...] --ca FILE
                             --cert FILE --key FILE
  provider add trusted NAME --attestation URL --kps URL --ca FILE
                            [--tcti TCTI] [--host NAME]
                                       enrolls this host's TPM with the
                                       attestation service and attests once;
                                       TCTI default device:/dev/tpmrm0, NAME
                                       (as registered there) default the
                                       host name
  provider list | show NAME | remove NAME [--force] | default NAME
  provider set NAME --kek-cache-max-age DURATION|unlimited|default
                                       how long KEKs are used from the
                                       cache (e.g. 15m, 1h; also an option
                                       of provider add); defaults: native
                                       unlimited, standard 1h, trusted 15m
  provider backup NAME --out FILE.p12|- --password-file FILE
  provider restore FILE.p12|- --name NAME --password-file FILE
                   [--tpm [--tcti TCTI] [--pcrs 0,7]]
VMs:
  vm create VM [--provider NAME] [--no-auto-unlock]
  vm list | show VM | unregister VM | delete VM [--erase] [--destroy-key]
  vm register VM --from PATH [PATH...] [--no-auto-unlock]
                                       rebuild a VM's entry from its volumes
  vm set VM --auto-unlock on|off       open its volumes at boot (or not)
  vm set VM --away on|off              it runs on another host (set by the
                                       libvirt hook when it migrates away)
  vm rekey VM [--provider NAME] [--revoke-old] [--deep]
                                       new KEK (from NAME: provider change),
                                       every disk's DEK re-wrapped; --deep:
                                       also new DEKs, data re-encrypted
                                       (online or offline); re-run to
                                       finish an interrupted one
Volumes:
  volume create VM DISK (--device PATH | --file PATH --size SIZE)
                [--sector-size 512|4096] [--force]
  volume list [VM]
  volume recovery-key add VM/DISK      adds a passphrase keyslot that opens the
                                       volume with plain cryptsetup, and
                                       prints its key once (docs/recovery.md)
  volume recovery-key remove VM/DISK [--force]
  open  VM/DISK | PATH [--discards] [--auto]
                                       prints the /dev/mapper path; --auto
                                       (the boot path's): leaves a volume
                                       closed that an admin closed on this
                                       boot
  open  --all [--file-backed] [--auto] opens every volume of the VMs with
                                       auto-unlock (only image files with
                                       --file-backed)
  close VM/DISK | PATH [--auto]        also keeps it closed against the boot
                                       path until the next boot, a new
                                       device, or an explicit open (not
                                       with --auto: the units' stop)
  unlock VM/DISK [--deadline SEC]      the boot path's open (the unlock
                                       units run it; docs/boot.md): skips
                                       VMs without auto-unlock, retries
                                       while vcryptd or the KEK is not
                                       there yet, until SEC (default 30)
  unlock --all [--file-backed] [--deadline SEC]
  unlock --stop (VM/DISK | --all)      closes what the unit's start opened
  status
  cache evict [VM]                     drop cached KEKs (all, or one VM's)
  probe DEVICE                         KEY=VALUE lines for udev (reads the
                                       header; needs no vcryptd)
libvirt domains (--connect URI, default qemu:///system):
  attach VM/DISK --domain DOMAIN [--target vdX]
                                       opens the volume, adds it to the
                                       domain as a raw virtio disk (live and
                                       persistent)
  detach VM/DISK --domain DOMAIN [--timeout SEC]
                                       removes it (waits SEC, default 10,
                                       for the guest), closes the volume

Exit codes: 0 ok, 1 internal, 2 usage, 3 vcryptd not running, 4 permission
denied, 5 not found, 6 exists, 7 busy, 8 key unavailable, 9 invalid volume,
10 no device-mapper, 11 I/O error, 12 invalid argument, 13 crypto failure.
)";

}  // namespace

Error UsageError(const std::string& msg) {
  return MakeError(ErrorCode::kUsage, msg + " (see 'vcryptctl --help')");
}

Result<Sub> ParseSub(const std::vector<std::string>& args,
                     const po::options_description& opts, size_t min_words,
                     size_t max_words, const std::string& what) {
  Sub s;
  po::options_description all;
  all.add(opts);
  all.add_options()("word", po::value<std::vector<std::string>>(&s.words));
  po::positional_options_description pos;
  pos.add("word", -1);
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(),
              s.vm);
    po::notify(s.vm);
  } catch (const po::error& e) {
    return UsageError(what + ": " + e.what());
  }
  if (s.words.size() < min_words || s.words.size() > max_words)
    return UsageError(what + ": wrong number of arguments");
  return s;
}

// Reads a secret file (password, private key) straight into locked
// memory; for passwords strips one trailing newline so `echo pw > file`
// works.
Result<SecureBuffer> ReadSecretFile(const std::string& path,
                                    const std::string& what,
                                    bool strip_newline) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    return MakeError(
        errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
        "cannot open " + what + " " + path + ": " + std::strerror(errno));
  SecureBuffer buf(kMaxSecretSize + 1);
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd.get(), buf.data() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      return MakeError(ErrorCode::kIo, "cannot read " + what + " " + path);
    if (r == 0) break;
    got += static_cast<size_t>(r);
    if (got == buf.size())
      return MakeError(ErrorCode::kInvalidArgument,
                       what + " " + path + " is too large");
  }
  if (strip_newline && got > 0 && buf.data()[got - 1] == '\n') --got;
  buf.Truncate(got);
  if (buf.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     what + " " + path + " is empty");
  return buf;
}

Result<std::string> ReadStdin(size_t max, const std::string& what) {
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t r = read(STDIN_FILENO, buf, sizeof(buf));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      return MakeError(ErrorCode::kIo, "cannot read " + what + " from stdin: " +
                                           std::strerror(errno));
    if (r == 0) break;
    if (data.size() + static_cast<size_t>(r) > max)
      return MakeError(ErrorCode::kInvalidArgument,
                       what + " on stdin is larger than " +
                           std::to_string(max >> 10) + " KiB");
    data.append(buf, static_cast<size_t>(r));
  }
  if (data.empty())
    return MakeError(ErrorCode::kInvalidArgument, what + " on stdin is empty");
  return data;
}

Result<SecureBuffer> ReadPasswordFile(const std::string& path) {
  return ReadSecretFile(path, "password file", true);
}

// Writes `data` as the new file `path` (mode `mode`), whole or not at all
// and never over an existing file (CreateFileOnce), with the hint an
// existing --out needs.
Status WriteNewFile(const std::string& path, std::span<const uint8_t> data,
                    mode_t mode) {
  Status st = CreateFileOnce(path, data, mode);
  if (!st.ok() && st.error().code == ErrorCode::kExists)
    return MakeError(ErrorCode::kExists,
                     path + " already exists; choose another --out");
  return st;
}

Result<Json> TargetArgs(const std::string& t) {
  if (!t.empty() && t[0] == '/') return Json{{"path", t}};
  auto slash = t.find('/');
  if (slash == std::string::npos || t.find('/', slash + 1) != std::string::npos)
    return UsageError("'" + t +
                      "' is neither VM/DISK nor an absolute device path");
  return Json{{"vm", t.substr(0, slash)}, {"disk", t.substr(slash + 1)}};
}

std::string Pad(const std::string& s, size_t w) {
  return s.size() >= w ? s + " " : s + std::string(w - s.size(), ' ');
}

std::string Str(const Json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_null()) return "-";
  return j.dump();
}

void PrintTable(std::ostream& out, const Json& rows,
                const std::vector<std::pair<std::string, std::string>>& cols) {
  std::vector<size_t> w;
  for (const auto& [key, title] : cols) {
    size_t m = title.size();
    for (const auto& r : rows)
      m = std::max(m, Str(r.value(key, Json())).size());
    w.push_back(m + 1);
  }
  // No trailing blanks.
  auto print = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (size_t i = 0; i < cells.size(); ++i) line += Pad(cells[i], w[i]);
    line.erase(line.find_last_not_of(' ') + 1);
    out << line << "\n";
  };
  std::vector<std::string> cells;
  for (const auto& c : cols) cells.push_back(c.second);
  print(cells);
  for (const auto& r : rows) {
    cells.clear();
    for (const auto& c : cols) cells.push_back(Str(r.value(c.first, Json())));
    print(cells);
  }
}

void PrintObject(std::ostream& out, const Json& obj,
                 const std::string& indent) {
  for (const auto& [k, v] : obj.items()) {
    if (v.is_object()) {
      out << indent << k << ":\n";
      PrintObject(out, v, indent + "  ");
    } else if (v.is_array() && !v.empty() && v[0].is_object()) {
      out << indent << k << ":\n";
      for (const auto& e : v) {
        PrintObject(out, e, indent + "  - ");
      }
    } else {
      out << indent << k << ": " << Str(v) << "\n";
    }
  }
}

// What a volume's state rests on: its mapping, or why it is not open
// ("(key unavailable: MESSAGE, since TIME)").
std::string StateDetail(const Json& d) {
  if (d.contains("mapping")) return Str(d["mapping"]);
  auto it = d.find("reason");
  if (it == d.end() || !it->is_object()) return "";
  std::string code = it->value("code", "");
  std::replace(code.begin(), code.end(), '_', ' ');
  std::string out = "(" + code + ": " + it->value("message", "");
  std::string since = it->value("since", "");
  if (!since.empty()) out += ", since " + since;
  return out + ")";
}
int Cli::Run(int argc, const char* const* argv) {
  argv_.assign(argv, argv + argc);
  argv_.push_back(nullptr);
  po::options_description global;
  std::string cmd;
  global.add_options()("help,h", "")("json", "")("socket", po::value(&socket_))(
      "command", po::value(&cmd))("rest",
                                  po::value<std::vector<std::string>>());
  po::positional_options_description pos;
  pos.add("command", 1).add("rest", -1);
  std::vector<std::string> rest;
  po::variables_map vm;
  try {
    auto parsed = po::command_line_parser(argc, argv)
                      .options(global)
                      .positional(pos)
                      .allow_unregistered()
                      .run();
    po::store(parsed, vm);
    po::notify(vm);
    rest = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!rest.empty() && rest.front() == cmd) rest.erase(rest.begin());
  } catch (const po::error& e) {
    err_ << "vcryptctl: " << e.what() << " (see 'vcryptctl --help')\n";
    return static_cast<int>(ErrorCode::kUsage);
  }
  json_ = vm.count("json") > 0;
  if (vm.count("help") || cmd == "help") {
    out_ << kUsage;
    return 0;
  }
  if (cmd.empty()) {
    err_ << "vcryptctl: no command given (see 'vcryptctl --help')\n";
    return static_cast<int>(ErrorCode::kUsage);
  }
  auto st = Dispatch(cmd, rest);
  if (!st.ok()) {
    // An empty message: the command printed its own error lines.
    if (!st.error().message.empty())
      err_ << "vcryptctl: " << st.error().message << "\n";
    return static_cast<int>(st.error().code);
  }
  return 0;
}

Status Cli::Dispatch(const std::string& cmd,
                     const std::vector<std::string>& rest) {
  if (cmd == "provider") return Provider(rest);
  if (cmd == "vm") return Vm(rest);
  if (cmd == "volume") return Volume(rest);
  if (cmd == "open" || cmd == "close") return OpenClose(cmd, rest);
  if (cmd == "status") return StatusCmd(rest);
  if (cmd == "cache") return Cache(rest);
  if (cmd == "probe") return Probe(rest);
  if (cmd == "unlock") return Unlock(rest);
  if (cmd == "attach" || cmd == "detach")
    return attach_ ? (this->*attach_)(cmd, rest) : ExecAttachHelper();
  return UsageError("unknown command '" + cmd + "'");
}

Status Cli::ExecAttachHelper() {
  auto helper =
      FindSiblingProgram("vcrypt-attach", VCRYPT_ATTACH_HELPER_RELPATH);
  if (!helper.ok())
    return MakeError(ErrorCode::kInternal,
                     "attach/detach need the helper program vcrypt-attach: " +
                         helper.error().message);
  out_.flush();
  err_.flush();
  execv(helper->c_str(), const_cast<char* const*>(argv_.data()));
  return MakeError(ErrorCode::kInternal,
                   "cannot run " + *helper + ": " + std::strerror(errno));
}

}  // namespace cli_internal

using cli_internal::Json;

Result<uint64_t> ParseSize(std::string_view text) {
  auto bad = [&] {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "invalid size '" + std::string(text) + "' (use e.g. 512M, 10G)");
  };
  size_t i = 0;
  uint64_t v = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return bad();
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return bad();
  std::string_view suf = text.substr(i);
  int shift = 0;
  if (!suf.empty()) {
    switch (suf[0]) {
      case 'K':
      case 'k':
        shift = 10;
        break;
      case 'M':
      case 'm':
        shift = 20;
        break;
      case 'G':
      case 'g':
        shift = 30;
        break;
      case 'T':
      case 't':
        shift = 40;
        break;
      default:
        return bad();
    }
    suf.remove_prefix(1);
    if (!(suf.empty() || suf == "B" || suf == "iB")) return bad();
  }
  if (v == 0 || v > (UINT64_MAX >> shift)) return bad();
  return v << shift;
}

ProgressRenderer::ProgressRenderer(std::ostream& out, size_t columns)
    : out_(out), columns_(columns) {}

std::string ProgressRenderer::ProgressLine(const std::string& label,
                                           uint64_t done, uint64_t total) {
  constexpr size_t kBar = 20;
  // In floating point: done * 100 overflows for the largest sizes. Floors
  // throughout, so only a finished disk shows 100%.
  const double frac =
      total == 0 ? 1.0 : static_cast<double>(std::min(done, total)) / total;
  const size_t filled = std::min(kBar, static_cast<size_t>(frac * kBar));
  const int percent = std::min(100, static_cast<int>(frac * 100));
  std::ostringstream line;
  line << label << "  [" << std::string(filled, '#')
       << std::string(kBar - filled, '-') << "] " << std::setw(3) << percent
       << "%  " << (std::min(done, total) >> 20) << "/" << (total >> 20)
       << " MiB";
  return line.str();
}

void ProgressRenderer::OnEvent(const Json& event) {
  if (!event.is_object()) return;
  auto str = [&](const char* key) {
    auto it = event.find(key);
    return it != event.end() && it->is_string() ? it->get<std::string>()
                                                : std::string("?");
  };
  auto bytes = [&](const char* key) -> uint64_t {
    auto it = event.find(key);
    if (it == event.end()) return 0;
    if (it->is_number_unsigned()) return it->get<uint64_t>();
    if (it->is_number_integer() && it->get<int64_t>() > 0)
      return static_cast<uint64_t>(it->get<int64_t>());
    return 0;
  };
  const std::string type = str("type");
  const std::string label = str("vm") + "/" + str("disk");
  if (type == "disk.start") {
    Draw(label, label + "  rekeying", false);
  } else if (type == "disk.progress") {
    Draw(label, ProgressLine(label, bytes("done_bytes"), bytes("total_bytes")),
         false);
  } else if (type == "disk.done") {
    std::string result = str("result");
    if (result == "already") result = "already rekeyed";
    if (result == "failed") {
      auto it = event.find("error");
      if (it != event.end() && it->is_object())
        result += ": " + it->value("message", std::string());
    }
    Draw(label, label + "  " + result, true);
  }
}

void ProgressRenderer::Finish() {
  if (open_) out_ << "\n" << std::flush;
  open_ = false;
}

void ProgressRenderer::Draw(const std::string& label, std::string line,
                            bool end) {
  // Another disk's line: the open one stays as it is.
  if (open_ && label != open_label_) Finish();
  if (!end && columns_ > 1 && line.size() > columns_ - 1)
    line.resize(columns_ - 1);
  if (open_) {
    out_ << "\r";
    // Blank what is left of a longer line underneath.
    if (line.size() < open_len_) line.append(open_len_ - line.size(), ' ');
  }
  out_ << line;
  if (end) out_ << "\n";
  out_ << std::flush;
  open_ = !end;
  open_label_ = label;
  open_len_ = line.size();
}

int RunCli(int argc, const char* const* argv, std::ostream& out,
           std::ostream& err) {
  cli_internal::Cli cli(out, err);
  return cli.Run(argc, argv);
}

}  // namespace vcrypt
