// The audit log of key operations (docs/audit.md).
//
// Every key operation vcryptd performs (a KEK created, fetched, evicted or
// destroyed; a DEK wrapped or unwrapped; a native primary key added,
// backed up, restored or removed) becomes one AuditRecord, handed to the
// AuditSink the Controller was given. A record says who asked (caller
// uid, request op), what (op), on what (VM, disk, volume UUID, provider,
// KEK ID, primary key ID) and how it ended (ok, or the error code and
// message). Successes and failures alike.
//
// Never key bytes: a record holds names, IDs and error messages only
// (messages never carry key material, see common/result.h), and nothing
// in it is built from a SecureBuffer.
//
// Line format (FormatAuditLine), one line per record:
//   vcrypt-audit: uid=0 op=kek.fetch request=open vm=web01 disk=root
//   volume=<uuid> provider=local kek_id=<id> source=cache result=ok
// (wrapped here; always one line). Fields are key=value separated by one
// space, in the order of AuditRecord; empty fields are left out except
// uid, op and result. A value made only of printable ASCII other than
// space, '"', '\' and '=' is written as is; any other value is quoted:
// "..." with '"' and '\' escaped by '\', and every byte outside printable
// ASCII (control characters, DEL, bytes >= 0x80) written as \xNN. So a
// line never holds a newline or a terminal control sequence, whatever an
// error message or path contains.
#ifndef VCRYPT_DAEMON_AUDIT_H_
#define VCRYPT_DAEMON_AUDIT_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace vcrypt {

// Stable names: they are what operators filter on (VCRYPT_OP=...).
enum class AuditOp {
  kKekCreate,        // "kek.create": a provider made a new KEK for a VM
  kKekFetch,         // "kek.fetch": a KEK was needed (from cache or provider)
  kDekWrap,          // "dek.wrap": a new volume's DEK wrapped under its KEK
  kDekUnwrap,        // "dek.unwrap": a volume's DEK unwrapped to open it
  kKekRekey,         // "kek.rekey": `vm rekey` finished (or left pending) for a VM
  kKekEvict,         // "kek.evict": a KEK dropped (wiped) from the cache
  kKekDestroy,       // "kek.destroy": a KEK destroyed at its provider
  kProviderAdd,      // "provider.add": a provider configured (native: new primary key)
  kProviderRemove,   // "provider.remove": a provider removed (native: primary key destroyed)
  kProviderBackup,   // "provider.backup": a native primary key exported (PKCS#12)
  kProviderRestore,  // "provider.restore": a native primary key imported
  kDekErase,         // "dek.erase": a volume's key material erased (vm delete --erase)
  kRecoveryAdd,      // "recovery.add": a recovery keyslot added (docs/recovery.md)
  kRecoveryRemove,   // "recovery.remove": a recovery keyslot destroyed
};

std::string_view AuditOpName(AuditOp op);

// What the Controller knows about a request before any key operation: who
// asked, and with which protocol op ("open", "vm.delete", ...; "shutdown"
// for what vcryptd does on its own when it stops).
struct AuditContext {
  uid_t uid = 0;
  std::string request;
};

struct AuditRecord {
  AuditOp op = AuditOp::kKekFetch;
  uid_t uid = 0;
  std::string request;
  std::string vm;
  std::string disk;
  std::string volume;  // LUKS2 UUID
  std::string provider;
  std::string kek_id;
  std::string primary_key_id;  // provider.* ops of native providers
  std::string source;          // kek.fetch: "cache" or "provider"
  std::string reason;          // kek.evict by vm.depart: "migrated", "saved"
  std::optional<Error> error;  // nullopt: result=ok

  // A record of `op` for the request in `ctx`.
  static AuditRecord For(const AuditContext& ctx, AuditOp op) {
    AuditRecord r;
    r.op = op;
    r.uid = ctx.uid;
    r.request = ctx.request;
    return r;
  }
  // Sets the result from a Status or Result<T>.
  template <typename R>
  AuditRecord& Outcome(const R& r) {
    if (r.ok()) {
      error.reset();
    } else {
      error = r.error();
    }
    return *this;
  }
};

// The fields of `r` as (name, raw value) pairs, in line order, without
// the empty ones: "uid", "op", "request", "vm", "disk", "volume",
// "provider", "kek_id", "primary_key_id", "source", "reason", "result",
// "error".
// "result" is "ok" or the error code name (ErrorCodeName); "error" is the
// error message.
std::vector<std::pair<std::string, std::string>> AuditFields(const AuditRecord& r);

// `value` as it appears after "key=" in an audit line (see above).
std::string AuditQuote(std::string_view value);
// `value` with '\' doubled and every byte outside printable ASCII as
// \xNN: what a journal field carries (no quoting needed there).
std::string AuditEscape(std::string_view value);

inline constexpr std::string_view kAuditLinePrefix = "vcrypt-audit: ";
// "vcrypt-audit: uid=... op=... ... result=..." (no trailing newline).
std::string FormatAuditLine(const AuditRecord& r);

// Where audit records go. Write is called from any thread, once per
// record, after the operation; it must not fail the operation (a sink
// that cannot deliver falls back or drops, it never throws).
class AuditSink {
 public:
  virtual ~AuditSink() = default;
  virtual void Write(const AuditRecord& record) = 0;
};

// True when `journal_stream` (the JOURNAL_STREAM environment variable:
// "<device>:<inode>" in decimal, set by systemd when it connects stdout or
// stderr to the journal) names the file `stderr_stat` describes, i.e.
// stderr goes to the journal (systemd.exec(5), "$JOURNAL_STREAM"). False
// for a null/malformed variable or a null stat (fstat failed): stderr was
// redirected elsewhere by whoever started us.
bool StderrIsJournal(const char* journal_stream,
                     const struct stat* stderr_stat);

// vcryptd's sink. Journal: sd_journal_sendv with MESSAGE=<the line>,
// SYSLOG_IDENTIFIER=vcryptd, MESSAGE_ID=kAuditMessageId, PRIORITY (info
// for ok, warning for a failure) and one VCRYPT_<FIELD>= per field
// (VCRYPT_OP, VCRYPT_VM, ...); if sd_journal_sendv fails, the line goes to
// stderr instead. (libsystemd drops a record silently when journald's
// socket is gone; stderr, a stream to journald, is then gone too.)
// Stderr: the line and a newline in one write(2), so concurrent lines
// never interleave.
class SystemAuditSink : public AuditSink {
 public:
  explicit SystemAuditSink(bool to_journal) : to_journal_(to_journal) {}
  // Journal when stderr is connected to it (StderrIsJournal on this
  // process's environment and fd 2), else stderr.
  static std::unique_ptr<SystemAuditSink> ForThisProcess();

  void Write(const AuditRecord& record) override;
  bool to_journal() const { return to_journal_; }

 private:
  bool to_journal_;
};

// MESSAGE_ID of every audit record in the journal
// (journalctl MESSAGE_ID=...).
inline constexpr std::string_view kAuditMessageId =
    "5d1c3f0e9a7b4e62b8a1c0f4d7e29b35";

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_AUDIT_H_
