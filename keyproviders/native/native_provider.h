// The native key provider: no key server; a 256-bit primary key held by the
// host.
//
// Decision (architecture.md leaves "derive or wrap" open): each VM gets a
// random 256-bit KEK, wrapped under the primary key with AES-256-GCM. The
// wrapped KEK is the KekRef data, stored in every volume token of the VM,
// so the KEK is recoverable from a token plus the primary key alone. The
// AAD is BuildAad("vcrypt-native-kek-v1", {primary_key_id, kek_id}): it
// binds the wrapped KEK to its KEK ID and to the primary key that made it.
// The VM name is deliberately not bound (the KEK ID is unique and a VM may
// be re-registered under another name). Wrapping rather than deriving keeps
// KEKs independent of the primary key (a future primary-key rotation
// re-wraps KEKs without touching volumes' DEK wraps).
//
// On-disk layout under `dir` (created 0700, files 0600, atomic writes):
//   config.json   {"version":1,"type":"native","name":..,
//                  "primary_key_id":..,"created":"YYYY-MM-DDTHH:MM:SSZ",
//                  "key_storage":"file"|"tpm"}
//                 with "tpm" also "tcti":.., "pcrs":[..] (SHA-256 bank,
//                 ascending; [] for none) and "key_check": 64 hex digits,
//                 HMAC-SHA256(primary key, "vcrypt-native-key-check-v1" 0x00
//                 primary_key_id), which tells an unsealed key that is not
//                 this provider's (a primary.sealed copied over from
//                 another provider) before it wraps anything.
//   primary.key     "file": the 32 raw primary-key bytes
//   primary.sealed  "tpm": the primary key sealed to this host's TPM
//                 (keyproviders/tpm/seal.h: a TPM2B_PUBLIC and a
//                 TPM2B_PRIVATE; only this TPM, and only while the PCRs
//                 hold the values they had at sealing, unseals it). The
//                 key is never written in clear: it is unsealed into
//                 locked memory at every Load.
// The key file is written before config.json, so a config.json means a
// complete provider. Unknown config.json members are ignored; an unknown
// "version" or "key_storage" is refused.
// The primary key ID is a random UUID made at creation; it travels with the
// key in backups so a restored provider recognises its volumes whatever
// name it is restored under.
//
// A TPM-sealed provider is backed up like any other (the backup holds the
// key itself, under the backup's password): that is how the key reaches the
// other hosts of a cluster, each of which seals it to its own TPM
// (`provider restore --tpm`), and how it survives the loss of the TPM.
//
// KekRef for native: kek_id = a random UUID,
//   data = {"primary_key_id": <uuid>, "wrapped_kek": WrappedKey JSON}
//
// Thread safety: a NativeProvider is immutable after Create/Load/Restore,
// so all const and KeyProvider methods may be called concurrently.
#ifndef VCRYPT_KEYPROVIDERS_NATIVE_NATIVE_PROVIDER_H_
#define VCRYPT_KEYPROVIDERS_NATIVE_NATIVE_PROVIDER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/secure_buffer.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

// Iteration count of the backup's PBKDF2-HMAC-SHA256 (and of its MAC KDF).
// OWASP 2023 guidance for PBKDF2-HMAC-SHA256.
inline constexpr int kBackupIterations = 600000;
// The most iterations a backup may claim, for its MAC's KDF and for the
// PBKDF2 of its safe alike: about 16 times what Backup writes, so backups
// of a future, costlier default still restore, while a file claiming, say,
// 2^31 - 1 (hours of derivation) is refused before any derivation runs.
// A restore at the cap costs a few seconds of CPU. Backup refuses more.
inline constexpr int kMaxBackupIterations = 10000000;
// Backups larger than this are not ours (ours are under 1 KiB).
inline constexpr size_t kMaxBackupFileSize = 64 * 1024;

// Backup and restore passwords are used byte for byte (UTF-8 expected).
// A password read from a file usually ends in a newline that the user did
// not mean as part of it: callers reading --password-file call this, which
// removes one trailing "\n" (or "\r\n"), and nothing else.
void StripPasswordFileNewline(SecureBuffer& password);

// Where a provider keeps its primary key (see the layout above).
struct NativeKeyStorage {
  // false: primary.key, a root-only file. true: primary.sealed, sealed to
  // the TPM at `tcti`.
  bool tpm = false;
  // The TPM's TCTI; empty: "device:/dev/tpmrm0" (the kernel's resource
  // manager). Only with `tpm`.
  std::string tcti;
  // SHA-256 PCRs whose current values the key is sealed to (PolicyPCR;
  // ascending, 0..23); empty: no PCR policy. Only with `tpm`.
  std::vector<int> pcrs;
};

struct NativeProviderOptions {
  // Whether a TPM-sealed key's TCTI may be a simulator's (swtpm:, mssim:;
  // CheckTcti in keyproviders/tpm/tpm_context.h); otherwise only TPM
  // device nodes. vcryptd's config allow_test_tcti.
  bool allow_test_tcti = false;
};

class NativeProvider : public KeyProvider {
 public:
  // Generates a new primary key and writes the provider's files into `dir`
  // (which must not exist, or be an empty directory; parents are created
  // 0700), keeping the key as `storage` says. With storage.tpm the key is
  // sealed, and unsealed again to check, before anything is written.
  // kInvalidArgument for a bad name (ValidateProviderName) or storage (a
  // TCTI that `options` does not allow, a bad PCR list, a TCTI or PCRs
  // without tpm); kExists if `dir` is not empty; kIo on write errors or
  // when the TPM cannot be reached or refuses (named, with tpm2-tss's
  // reason). Nothing is left behind on failure (a directory that existed
  // before is left, empty).
  static Result<std::unique_ptr<NativeProvider>> Create(
      const std::string& name, const std::string& dir,
      const NativeKeyStorage& storage = {},
      const NativeProviderOptions& options = {});
  // Loads a provider created by Create or Restore. kNotFound when config.json
  // or the key file is missing; kIo on read errors; kInvalidArgument when a
  // file is damaged or inconsistent (config.json not valid or naming another
  // provider than `name`, primary.key not exactly 32 bytes, primary.sealed
  // not a sealed object made for config.json's PCRs, an unsealed key whose
  // key_check differs, a TCTI that `options` does not allow) or insecure:
  // the key file must be a regular file (not a symlink) of mode 0600 owned
  // by the effective user, and `dir` must be owned by the effective user
  // and not writable by group or others. The message says how to fix it.
  // A TPM-sealed key the TPM refuses to give back is kKeyUnavailable,
  // "provider 'NAME': the primary key is sealed to another TPM or its PCR
  // policy no longer matches (PCRs 0,7): <why>"; a TPM that cannot be
  // reached is kIo.
  static Result<std::unique_ptr<NativeProvider>> Load(
      const std::string& name, const std::string& dir,
      const NativeProviderOptions& options = {});

  // Writes a PKCS#12 (RFC 7292) file holding the primary key, so the key can
  // be restored on this or another host:
  //  - one secret bag (secretTypeId id-aes256-GCM, 2.16.840.1.101.3.4.1.46,
  //    "an AES-256 key used for GCM"; value an OCTET STRING of 32 bytes),
  //    friendlyName = the primary key ID, plus a human-readable X.520
  //    description attribute naming the provider (informational only);
  //  - the safe encrypted with PBES2: PBKDF2-HMAC-SHA256, `iterations`
  //    iterations, 16-byte random salt, AES-256-CBC;
  //  - the PKCS#12 MAC: HMAC-SHA-256, 16-byte salt, `iterations` iterations
  //    of the PKCS#12 (RFC 7292 appendix B) KDF with SHA-256 -- OpenSSL 3.0
  //    has no PBMAC1, and this is what `openssl pkcs12 -macalg sha256`
  //    produces, so any OpenSSL 3 can read the file.
  // The password is used as given (see StripPasswordFileNewline); empty,
  // longer than 1024 bytes or containing a NUL byte → kInvalidArgument
  // (other tools could not type it). `iterations` outside
  // 1..kMaxBackupIterations → kInvalidArgument; production callers use the
  // default and only tests pass another value. The
  // file is written atomically with mode 0600; kExists if `out_path` exists (a
  // backup is never overwritten), kIo on write errors.
  Status Backup(const std::string& out_path, const SecureBuffer& password,
                int iterations = kBackupIterations) const;
  // The same PKCS#12 file, returned instead of written (it is encrypted
  // under the password, so it may live in ordinary memory). `iterations`
  // outside 1..kMaxBackupIterations → kInvalidArgument. vcryptd sends it
  // to the client, which writes the file: no temporary file anywhere.
  Result<std::string> BackupBytes(const SecureBuffer& password,
                                  int iterations = kBackupIterations) const;
  // Reads such a file and creates a provider named `name` in `dir` with the
  // same primary key and primary key ID, kept as `storage` says (Create's
  // rules for `name`, `dir`, `storage` and `options`; kExists if `dir` is
  // in use and kInvalidArgument for a bad `storage`, both checked before
  // the slow key derivation).
  // Errors, all one line:
  //  - kNotFound / kIo: `p12_path` missing or unreadable;
  //  - kInvalidArgument: bad name or password (see Backup); not a PKCS#12
  //    file at all (including one cut short so it no longer parses); a
  //    file without a MAC; or a file whose MAC verifies but which holds
  //    something else than one vcrypt primary key (exactly one encrypted
  //    safe with one 32-byte id-aes256-GCM secret bag, friendlyName a UUID);
  //    An iteration count (of the MAC's KDF or of an encrypted safe's
  //    PBKDF2) outside 1..kMaxBackupIterations, or a safe encrypted other
  //    than with PBES2/PBKDF2, is kInvalidArgument too ("backup FILE claims
  //    N iterations for ...; vcrypt accepts 1 to 10000000: ..."), found
  //    before any key derivation runs;
  //  - kCrypto "cannot read backup FILE: wrong password or damaged file":
  //    the MAC does not verify (a wrong password and a modified file are
  //    indistinguishable by design of PKCS#12 MACs).
  // Nothing is left in `dir` on failure.
  static Result<std::unique_ptr<NativeProvider>> Restore(
      const std::string& p12_path, const SecureBuffer& password,
      const std::string& name, const std::string& dir,
      const NativeKeyStorage& storage = {},
      const NativeProviderOptions& options = {});
  // The same from the file's bytes (`der`, at most kMaxBackupFileSize).
  // Messages name the backup as `what` ("backup FILE" for Restore).
  static Result<std::unique_ptr<NativeProvider>> RestoreBytes(
      std::string_view der, const SecureBuffer& password,
      const std::string& name, const std::string& dir, const std::string& what,
      const NativeKeyStorage& storage = {},
      const NativeProviderOptions& options = {});

  const std::string& name() const override { return name_; }
  std::string_view type() const override { return "native"; }
  // A fresh random KEK and its KekRef (see top of file). `vm` is not bound
  // into the KEK (see above); it is accepted for the interface.
  Result<NewKek> CreateKek(std::string_view vm) override;
  // kInvalidVolume: `ref` is malformed; kKeyUnavailable: `ref` names another
  // primary key ID (made by another native provider: restore its backup);
  // kCrypto: the wrapped KEK does not unwrap (tampered, or mismatching
  // kek_id).
  Result<SecureBuffer> GetKek(const KekRef& ref) override;
  // True when ref.data.primary_key_id is this provider's primary key ID.
  bool Recognizes(const KekRef& ref) const override;
  // {"name","type":"native","primary_key_id","created","key_storage":"file"}
  // or, sealed to the TPM, {...,"key_storage":"tpm","tcti","pcrs":[..]}.
  nlohmann::json Describe() const override;

  const std::string& primary_key_id() const { return primary_key_id_; }
  const std::string& dir() const { return dir_; }
  const NativeKeyStorage& key_storage() const { return storage_; }

 private:
  NativeProvider(std::string name, std::string dir, std::string primary_key_id,
                 std::string created, NativeKeyStorage storage,
                 SecureBuffer primary_key);

  std::string name_;
  std::string dir_;
  std::string primary_key_id_;
  std::string created_;
  NativeKeyStorage storage_;
  SecureBuffer primary_key_;
};

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_NATIVE_NATIVE_PROVIDER_H_
