// LUKS2 reencryption of a vcrypt volume to a new DEK: the block-layer half
// of a deep rekey (docs/rekey.md).
//
// libcryptsetup 2.6 reencrypts only with keys it reads from keyslots, and
// a vcrypt volume has none. So a deep rekey adds, for its duration, two
// keyslots under one random passphrase: one holding the current DEK, one
// (unbound, no segment yet) holding the new DEK. A marker token of type
// kReencryptTokenType is bound to both:
//   {"type": "vcrypt-reencrypt", "keyslots": ["<a>", "<b>"],
//    "vcrypt_reencrypt_version": 1, "vcrypt": <caller's payload object>}
// The caller's payload carries the passphrase wrapped like a DEK, so a
// crash at any point leaves a volume that vcrypt can still open (by that
// passphrase, libcryptsetup combining both keys) and finish. When the
// reencryption is done the caller writes the new DEK into the vcrypt
// token and RemoveReencryptKeyslots takes the keyslots and the marker
// away: no keyslot remains.
//
// The marker is written first, bound to nothing, and only then are the
// keyslots added and bound, so every keyslot this file adds is findable
// through the marker or opens with its passphrase (RemoveReencryptKeyslots
// uses both).
//
// All of this holds the library lock of volume.h, including
// RunReencrypt, which takes minutes: vcryptd runs it in a child process
// (daemon/reencrypt_helper.h), never in its own.
#ifndef VCRYPT_DMTOOLS_REENCRYPT_H_
#define VCRYPT_DMTOOLS_REENCRYPT_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

inline constexpr std::string_view kReencryptTokenType = "vcrypt-reencrypt";

// What the LUKS2 header says about reencryption.
enum class ReencryptPhase {
  kNone,        // no reencryption in the header
  kInProgress,  // started, interrupted cleanly or running now
  kCrashed,     // interrupted in the middle of a step: needs recovery,
                // which RunReencrypt and ActivateByPassphrase do first
};

struct ReencryptState {
  std::string uuid;  // LUKS2 UUID
  ReencryptPhase phase = ReencryptPhase::kNone;
  int token_id = -1;          // the marker; -1 when there is none
  std::string payload;        // the marker's "vcrypt" member (JSON text)
  std::vector<int> keyslots;  // keyslots bound to the marker
  // Among those: the keyslot bound to the data segment (the current DEK)
  // and the unbound one (the new DEK), as before reencryption starts;
  // -1 when there is no such keyslot.
  int old_keyslot = -1;
  int new_keyslot = -1;
  int active_keyslots = 0;  // all keyslots of the header, ours or not
  bool has_marker() const { return token_id >= 0; }
};

// Reads the reencryption phase and the marker; read-only. kInvalidVolume
// for several markers or a reencryption state libcryptsetup calls
// invalid; otherwise as ReadHeader.
Result<ReencryptState> ReadReencryptState(const std::string& device);

// Sets a deep rekey up, as described at the top of this file:
// marker (with `payload_json`, a JSON object), keyslot for `old_dek`,
// unbound keyslot for `new_dek`, both under `passphrase` with PBKDF2 at
// the minimum iteration count (the passphrase is 256 random bits; a slow
// KDF protects guessable secrets only), then the binding. Errors, each
// leaving the header as it was:
//  - kInvalidArgument: key sizes, empty passphrase, payload not an object;
//  - kBusy: the header already has a reencryption;
//  - kExists: a marker exists already (finish or remove that first);
//  - kCrypto: `old_dek` is not the volume's key;
//  - kIo: libcryptsetup failures (no free keyslot, write errors);
//  - as ReadReencryptState.
Status PrepareReencrypt(const std::string& device, const SecureBuffer& old_dek,
                        const SecureBuffer& new_dek,
                        const SecureBuffer& passphrase,
                        const std::string& payload_json);

// Called after each reencrypted chunk with bytes done and the total;
// returning false stops cleanly after that chunk (resumable).
using ReencryptProgress = std::function<bool(uint64_t done, uint64_t total)>;

// Runs a prepared reencryption to its end: starts it (aes-xts-plain64,
// same sector size, checksum resilience, forward, no data shift), or
// resumes it, recovering a crashed step first. `active_name` is the dm
// name of the open volume for an online reencryption, "" for offline.
// Ok once the header shows no reencryption (the data is under the new
// DEK). kBusy when another process is reencrypting it, or when `progress`
// stopped it (message says "interrupted"); kCrypto (passphrase opens no
// keyslot); kInvalidVolume (nothing prepared: no marker); kIo.
Status RunReencrypt(const std::string& device, const std::string& active_name,
                    const SecureBuffer& passphrase,
                    const ReencryptProgress& progress);

// The key of the volume's data segment, from a keyslot that opens with
// `passphrase`: after RunReencrypt the new DEK. kBusy while a
// reencryption is in the header; kCrypto when no keyslot opens.
Result<SecureBuffer> VolumeKeyByPassphrase(const std::string& device,
                                           const SecureBuffer& passphrase);

// Removes what PrepareReencrypt added: every keyslot bound to a marker,
// with `passphrase` also every keyslot it opens that no recovery marker
// claims (a keyslot added before a crash could bind it), then the
// markers. Refuses with kBusy while a reencryption is in the header.
// Idempotent; ok when there is nothing to remove.
Status RemoveReencryptKeyslots(const std::string& device,
                               const SecureBuffer* passphrase);

}  // namespace vcrypt

#endif  // VCRYPT_DMTOOLS_REENCRYPT_H_
