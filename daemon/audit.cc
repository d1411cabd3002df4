#include "daemon/audit.h"

#include <sys/uio.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>

// The records' code location would be this file for every record: noise.
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#include "common/escape.h"

namespace vcrypt {
namespace {

bool Printable(unsigned char c) { return PrintableAscii(c); }

// Decimal digits only: no sign, no blanks, no overflow.
bool ParseDecimal(std::string_view s, unsigned long long* out) {  // NOLINT(runtime/int)
  if (s.empty() || s[0] < '0' || s[0] > '9') return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

// "VCRYPT_" + upper-case field name: the journal field of an audit field.
std::string JournalFieldName(std::string_view field) {
  std::string out = "VCRYPT_";
  for (char c : field)
    out += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  return out;
}

// One write(2) of the whole line: lines from several threads (and vcryptd's
// other log lines, each one write too) never interleave.
void WriteStderrLine(const std::string& line) {
  std::string out = line + "\n";
  const char* p = out.data();
  size_t left = out.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // nowhere left to report it
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace

std::string_view AuditOpName(AuditOp op) {
  switch (op) {
    case AuditOp::kKekCreate: return "kek.create";
    case AuditOp::kKekFetch: return "kek.fetch";
    case AuditOp::kDekWrap: return "dek.wrap";
    case AuditOp::kDekUnwrap: return "dek.unwrap";
    case AuditOp::kKekRekey: return "kek.rekey";
    case AuditOp::kKekEvict: return "kek.evict";
    case AuditOp::kKekDestroy: return "kek.destroy";
    case AuditOp::kProviderAdd: return "provider.add";
    case AuditOp::kProviderRemove: return "provider.remove";
    case AuditOp::kProviderBackup: return "provider.backup";
    case AuditOp::kProviderRestore: return "provider.restore";
    case AuditOp::kDekErase: return "dek.erase";
    case AuditOp::kRecoveryAdd: return "recovery.add";
    case AuditOp::kRecoveryRemove: return "recovery.remove";
  }
  return "unknown";
}

std::vector<std::pair<std::string, std::string>> AuditFields(const AuditRecord& r) {
  std::vector<std::pair<std::string, std::string>> f;
  auto add = [&](const char* name, const std::string& value) {
    if (!value.empty()) f.emplace_back(name, value);
  };
  f.emplace_back("uid", std::to_string(r.uid));
  f.emplace_back("op", std::string(AuditOpName(r.op)));
  add("request", r.request);
  add("vm", r.vm);
  add("disk", r.disk);
  add("volume", r.volume);
  add("provider", r.provider);
  add("kek_id", r.kek_id);
  add("primary_key_id", r.primary_key_id);
  add("source", r.source);
  add("reason", r.reason);
  f.emplace_back("result",
                 r.error ? std::string(ErrorCodeName(r.error->code)) : "ok");
  if (r.error) add("error", r.error->message);
  return f;
}

std::string AuditQuote(std::string_view value) {
  bool bare = !value.empty();
  for (unsigned char c : value)
    if (!Printable(c) || c == ' ' || c == '"' || c == '\\' || c == '=')
      bare = false;
  if (bare) return std::string(value);
  std::string out = "\"";
  for (unsigned char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (Printable(c)) {
      out += static_cast<char>(c);
    } else {
      AppendHexEscape(out, c);
    }
  }
  out += '"';
  return out;
}

std::string AuditEscape(std::string_view value) {
  return EscapeForMessage(value);
}

std::string FormatAuditLine(const AuditRecord& r) {
  std::string line(kAuditLinePrefix);
  bool first = true;
  for (const auto& [name, value] : AuditFields(r)) {
    if (!first) line += ' ';
    first = false;
    line += name;
    line += '=';
    line += AuditQuote(value);
  }
  return line;
}

bool StderrIsJournal(const char* journal_stream,
                     const struct stat* stderr_stat) {
  if (journal_stream == nullptr || stderr_stat == nullptr) return false;
  std::string_view v(journal_stream);
  size_t colon = v.find(':');
  if (colon == std::string_view::npos) return false;
  unsigned long long dev, ino;  // NOLINT(runtime/int)
  if (!ParseDecimal(v.substr(0, colon), &dev) ||
      !ParseDecimal(v.substr(colon + 1), &ino))
    return false;
  return static_cast<unsigned long long>(stderr_stat->st_dev) == dev &&  // NOLINT
         static_cast<unsigned long long>(stderr_stat->st_ino) == ino;    // NOLINT
}

std::unique_ptr<SystemAuditSink> SystemAuditSink::ForThisProcess() {
  struct stat st;
  const bool have_stat = fstat(STDERR_FILENO, &st) == 0;
  return std::make_unique<SystemAuditSink>(
      StderrIsJournal(std::getenv("JOURNAL_STREAM"), have_stat ? &st : nullptr));
}

void SystemAuditSink::Write(const AuditRecord& record) {
  const std::string line = FormatAuditLine(record);
  if (to_journal_) {
    std::vector<std::string> fields = {
        "MESSAGE=" + line,
        "SYSLOG_IDENTIFIER=vcryptd",
        "MESSAGE_ID=" + std::string(kAuditMessageId),
        "PRIORITY=" + std::to_string(record.error ? LOG_WARNING : LOG_INFO),
    };
    for (const auto& [name, value] : AuditFields(record))
      fields.push_back(JournalFieldName(name) + "=" + AuditEscape(value));
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (auto& f : fields) iov.push_back({f.data(), f.size()});
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0) return;
    // journald refused or is gone: the record must still go somewhere.
  }
  WriteStderrLine(line);
}

}  // namespace vcrypt
