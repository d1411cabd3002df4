// Block-layer operations on vcrypt volumes, through libcryptsetup and
// libdevmapper only.
//
// A vcrypt volume is LUKS2 with cipher aes-xts-plain64, a 512-bit volume
// key (the DEK), sector size 4096 (or 512), subsystem "vcrypt", label
// "<vm>/<disk>", zero keyslots (or one recovery keyslot, see the end of
// this file) and one `vcrypt` token (token.h).
//
// `device` may be a block device or a regular file; for a file,
// libcryptsetup attaches an auto-clearing loop device on activation, which
// the kernel detaches when the mapping is removed.
//
// Every function either completes or leaves the device and the dm table as
// they were: no half-written header, no stray mapping or loop device.
//
// Process-wide effects of this library (set once, on first use):
//  - libcryptsetup's log callback is replaced: nothing is printed. The last
//    error-level message of libcryptsetup/libdevmapper on the calling
//    thread may be appended to an Error message in parentheses (those
//    messages describe devices, never key bytes).
//  - libcryptsetup's use of the kernel keyring for volume keys is turned
//    off (crypt_volume_key_keyring(0)): the DEK goes straight into the
//    dm-crypt table. With the keyring, libcryptsetup 2.6 leaves a copy in
//    the activating thread's keyring for the life of that thread, which a
//    long-running daemon should not accumulate. Consequence: root can see
//    the key with `dmsetup table --showkeys`, as with plain dm-crypt.
//  - Every call into libcryptsetup/libdevmapper is made under one
//    process-wide lock: libcryptsetup's dm backend and libdevmapper keep
//    unsynchronised global state, and concurrent use crashes.
// All functions are safe to call from several threads, but two operations
// on the same device or mapping name must not run concurrently (vcryptd
// serialises per volume); the busy checks in Activate are check-then-act.
//
// One header for the whole block-layer API, so that callers include one
// file; the implementation is split by concern (dmtools/lib_internal.h
// lists which file holds what): format.cc, header.cc (header and token
// I/O), activation.cc, mappings.cc, recovery.cc, and library.cc, which
// owns the library setup and the lock.
#ifndef VCRYPT_DMTOOLS_VOLUME_H_
#define VCRYPT_DMTOOLS_VOLUME_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "dmtools/layout.h"

namespace vcrypt {

inline constexpr size_t kDekSize = 64;  // aes-xts-plain64, 2 x 256 bits

// True when /dev/mapper/control exists and the kernel's dm driver answers
// a version request. dm-crypt itself is loaded on demand by the kernel at
// the first activation; its absence shows up as kNoDeviceMapper there.
bool DeviceMapperAvailable();

struct FormatParams {
  std::string device;
  uint32_t sector_size = 4096;  // 512 or 4096
  std::string label;            // "<vm>/<disk>", 1..kMaxLabelLength bytes
  // Without force, a device that already carries a LUKS header or any
  // filesystem/partition signature (libblkid superblock and partition
  // table probe) is refused with kExists.
  bool force = false;
  // When >= 0, the device or file to format, already open (e.g. an image
  // file vcryptd just created); `device` then only names it in messages.
  // Otherwise `device` is opened once and every check and the format
  // work on what that open found.
  int fd = -1;
};

// Formats `device` with `dek` as the volume key (kDekSize bytes) and zero
// keyslots, then writes the vcrypt token. Returns the new
// LUKS2 UUID. `make_token` is called with the new UUID (the token's AAD
// needs it) and returns the token JSON; if it fails, or any step fails, the
// LUKS header area is wiped again so no half-made volume remains.
// The result: LUKS2, aes-xts-plain64, 512-bit key, the given sector size,
// subsystem "vcrypt", the given label, data offset kLuks2HeaderSize (more
// if a block device reports a larger I/O alignment), and
// a volume-key digest made with PBKDF2-SHA256 at libcryptsetup's minimum
// of 1000 iterations (not benchmarked: iterations protect guessable
// secrets, the DEK is 512 random bits, and a benchmarked count costs
// ~125 ms of CPU at every open and seconds at every format).
// Checks, all before anything is written (the device is untouched when
// they fail):
//  - kInvalidArgument: sector size not 512/4096, DEK not kDekSize bytes,
//    label empty or too long, device smaller than kMinVolumeSize, size
//    not a multiple of the sector size, logical block size of a block
//    device larger than the sector size, `device` neither a block device
//    nor a regular file;
//  - kNotFound: `device` does not exist;
//  - kBusy: a block device that cannot be opened O_EXCL (mounted, mapped,
//    held), or a file bound to a loop device — even with force;
//  - kInvalidArgument, even with force: a block device that is a vcrypt
//    mapping or stacked on one (dmtools/stacking.h), i.e. a VM's disk in
//    clear. Decided by the device number of what the open found; when the
//    stack cannot be read, that error's code, refused all the same;
//  - kExists: a signature is present and force is false.
// After writing began: the token from make_token must pass
// VcryptToken::Parse (else kInvalidArgument) and fit kMaxTokenSize; the
// error from make_token is returned as is; libcryptsetup failures are kIo.
// A failure of crypt_format itself wipes only when a new LUKS header is
// found afterwards (crypt_format may fail before writing anything).
using TokenMaker = std::function<Result<std::string>(const std::string& uuid)>;
Result<std::string> FormatVolume(const FormatParams& params,
                                 const SecureBuffer& dek,
                                 const TokenMaker& make_token);

struct VolumeHeader {
  std::string device;
  std::string uuid;
  std::string label;
  std::string subsystem;
  std::string cipher;  // e.g. "aes-xts-plain64"
  // Volume key size. LUKS2 records it only in keyslots, and a vcrypt
  // volume has none: then it is taken from the vcrypt token (the wrapped
  // DEK has the DEK's length), and 0 when there is no parsable token. The
  // LUKS2 digest checks the actual key at activation either way.
  uint32_t key_bits = 0;  // 512
  uint32_t sector_size = 0;
  int active_keyslots = 0;                // keyslots in any state but inactive
  std::optional<std::string> token_json;  // the vcrypt token, if any
  int token_id = -1;
  uint64_t data_offset = 0;  // bytes
  // A deep rekey's marker token is present (dmtools/reencrypt.h): the
  // volume may be in the middle of one; ReadReencryptState says more.
  bool deep_rekey_marker = false;
};

// Reads the LUKS2 header (read-only; works on an active volume too).
// Does not require the header to be a vcrypt volume: callers check
// subsystem/cipher/token. kNotFound (no device), kInvalidVolume (not LUKS,
// LUKS1, or more than one vcrypt token), kIo.
Result<VolumeHeader> ReadHeader(const std::string& device);

// Replaces the vcrypt token of a LUKS2 device atomically (libcryptsetup
// writes both header copies under its metadata lock); adds one when the
// header has none. `token_json` must pass VcryptToken::Parse
// (kInvalidArgument otherwise). kNotFound, kInvalidVolume (not LUKS2, or
// several vcrypt tokens), kInvalidArgument (no room in the metadata
// area), kIo.
Status WriteToken(const std::string& device, const std::string& token_json);

// Checks `dek` against the LUKS2 digest of `device` without activating
// anything (crypt_activate_by_volume_key with no name). kCrypto when it is
// not this volume's key; kNotFound, kInvalidVolume, kIo as ReadHeader.
Status VerifyDek(const std::string& device, const SecureBuffer& dek);

// Erases the key material of a LUKS2 device for good: every token (the
// vcrypt token holds the only copy of the wrapped DEK) and every keyslot
// (a recovery passphrase) are removed, and libcryptsetup rewrites both
// header copies and wipes the keyslot areas. The header stays (UUID,
// label, digest), so the device is still recognisable, but no key opens it
// again. Idempotent. kNotFound, kInvalidVolume (not LUKS2), kBusy (the
// volume is mapped), kIo.
Status EraseKeyMaterial(const std::string& device);

struct ActivateParams {
  std::string device;
  std::string name;       // dm name, e.g. "vcrypt-vm1-disk0"
  bool discards = false;  // CRYPT_ACTIVATE_ALLOW_DISCARDS when true
  // true: CRYPT_ACTIVATE_NO_READ_WORKQUEUE|NO_WRITE_WORKQUEUE; false: the
  // kernel's default (workqueues).
  // nullopt: bypass when the backing storage is non-rotational per sysfs
  // (queue/rotational of the whole disk). For a regular file that is the
  // disk of the file system holding it (st_dev; for file systems with an
  // anonymous st_dev such as btrfs, the mount source from mountinfo).
  // When it cannot be told (tmpfs, overlayfs, NFS, 9p), no bypass. In
  // this automatic mode only, a kernel that refuses the flags gets a
  // second activation without them.
  std::optional<bool> bypass_workqueues;
};

// Activates the mapping with the DEK and returns /dev/mapper/<name>, which
// exists on return (libcryptsetup waits for udev when udevd runs; without
// udev the node is created through libdevmapper). The header must be
// LUKS2; it need not carry a vcrypt token.
// Errors: kInvalidArgument (bad name, DEK size), kNoDeviceMapper (message
// starts "device-mapper not available in this kernel"), kNotFound,
// kInvalidVolume (not LUKS2), kBusy (a mapping with that name exists, or
// this LUKS UUID is active under any name — the message names it — or the
// device is held exclusively), kCrypto (the DEK does not match the LUKS2
// digest; nothing is left behind), kIo.
Result<std::string> Activate(const ActivateParams& params,
                             const SecureBuffer& dek);

// Activates the mapping with a keyslot passphrase instead of the DEK (any
// keyslot). vcrypt uses it only for a volume in the middle of a deep rekey
// (dmtools/reencrypt.h), whose data is under two keys: libcryptsetup then
// builds the mixed table, and recovers an interrupted reencryption step
// first when the header says one crashed. Errors as Activate; kCrypto
// when no keyslot opens with the passphrase.
Result<std::string> ActivateByPassphrase(const ActivateParams& params,
                                         const SecureBuffer& passphrase);

// What the kernel's dm table says about a mapping. Never holds key bytes:
// the table is read with dm_task_secure_data and the key field is only
// measured.
struct MappingInfo {
  std::string name;
  std::string path;          // /dev/mapper/<name>
  std::string dm_uuid;       // e.g. "CRYPT-LUKS2-<32 hex>-<name>"
  std::string luks_uuid;     // canonical 8-4-4-4-12 form from dm_uuid, or ""
  std::string backing;       // backing device path (loop device for files)
  std::string backing_file;  // for loop devices, the backing file ("" else)
  int open_count = 0;
  bool suspended = false;
  // Type of the first target of the live table ("crypt" for a vcrypt
  // mapping, which has exactly one target).
  std::string target;
  int target_count = 0;
  uint64_t size_bytes = 0;  // sum of all targets
  // For a crypt first target:
  std::string cipher;           // "aes-xts-plain64"
  uint32_t key_bits = 0;        // 512
  bool key_in_keyring = false;  // key given as ":<size>:logon:<desc>"
  // dm-crypt optional parameters, e.g. "allow_discards",
  // "no_read_workqueue", "no_write_workqueue", "sector_size:4096".
  std::vector<std::string> options;
};

// kNotFound if no such mapping; kNoDeviceMapper; kInvalidArgument (name).
Result<MappingInfo> QueryMapping(const std::string& name);
// All active mappings whose dm name starts with `prefix` ("" for all).
Result<std::vector<MappingInfo>> ListMappings(const std::string& prefix);
// The active mapping (any name) of the LUKS2 volume with `luks_uuid`
// (dashes and case do not matter); nullopt when none. kInvalidArgument
// for a string that is not a UUID.
Result<std::optional<MappingInfo>> FindMappingByUuid(
    const std::string& luks_uuid);

// Removes the mapping. Refuses with kBusy "/dev/mapper/N is in use (open
// count C); stop whatever holds it (...)" when it is open (a transient
// open, e.g. a udev probe, is given about a second to go away);
// kNotFound; kInvalidArgument for mappings not created by libcryptsetup
// (dm UUID not "CRYPT-..."), so LVM or multipath maps are never removed.
// An auto-clear loop device under it is detached by the kernel; this waits
// (up to 5 s) until it is gone, so none remains on return.
Status Deactivate(const std::string& name);

// ---------------------------------------------------------------------------
// Recovery keyslot (docs/recovery.md).
//
// An optional passphrase keyslot that holds the DEK, so that a stock
// `cryptsetup open` opens the volume with the recovery key alone, without
// vcrypt or its key provider. vcrypt knows it by a marker, a LUKS2 token
// bound to that one keyslot:
//   {"type": "vcrypt-recovery", "keyslots": ["<n>"],
//    "vcrypt_recovery_version": 1, "created": "<RFC 3339 UTC>"}
// (the strictly parsed `vcrypt` token is not touched). A keyslot without a
// marker is not vcrypt's and is never destroyed here. A marker bound to no
// keyslot, which is what a removal leaves if it stops between its two
// header writes, counts as no recovery key; the next AddRecoveryKeyslot
// deletes it.
//
// These hold the library lock (see the top of this file) for the whole
// argon2id computation, a few seconds: other volume operations of the
// process wait meanwhile.

inline constexpr std::string_view kRecoveryTokenType = "vcrypt-recovery";

struct RecoveryKeyslot {
  int keyslot = -1;
  int token_id = -1;     // the marker
  std::string created;   // from the marker; "" when it has none
  // The keyslot's PBKDF as libcryptsetup reports it (luksDump shows the
  // same): "argon2id", time cost, memory cost, threads.
  std::string pbkdf;
  uint32_t iterations = 0;
  uint32_t memory_kib = 0;
  uint32_t threads = 0;
};

struct RecoveryState {
  std::string uuid;                     // LUKS2 UUID of the header read
  std::optional<RecoveryKeyslot> slot;  // nullopt: no recovery keyslot
};

// The recovery keyslot of a LUKS2 device, read-only. kInvalidVolume when a
// marker is bound to several keyslots or to one that is not a valid
// keyslot, or several markers are bound; otherwise as ReadHeader.
Result<RecoveryState> ReadRecoveryKeyslot(const std::string& device);

// Adds a keyslot holding `dek` under `passphrase` with libcryptsetup's
// default LUKS2 PBKDF (crypt_get_pbkdf_default: argon2id, 2 s target,
// up to 1 GiB and 4 threads, benchmarked on this host now, so a busy or
// small host gets a lower memory cost), then its marker (`created` goes
// into it), then opens the new keyslot with `passphrase` from a freshly
// read header (crypt_activate_by_passphrase without a name: a check,
// nothing is activated). Returns the keyslot.
// Errors, each leaving no new keyslot and no new marker behind:
//  - kExists: the device already has a recovery keyslot (message names it);
//  - kInvalidArgument: DEK not kDekSize bytes, empty passphrase;
//  - kCrypto: `dek` is not this volume's key (LUKS2 digest);
//  - kInternal: not enough memory for argon2id, found before anything is
//    written (MemAvailable below the memory cost libcryptsetup would use,
//    which is its default capped at half of physical memory) or when
//    libcryptsetup's allocation fails (ENOMEM);
//  - kIo: libcryptsetup failures (no free keyslot, write errors), or the
//    new keyslot does not open with `passphrase`;
//  - as ReadRecoveryKeyslot.
Result<RecoveryKeyslot> AddRecoveryKeyslot(const std::string& device,
                                           const SecureBuffer& dek,
                                           const SecureBuffer& passphrase,
                                           const std::string& created);

// Destroys the recovery keyslot (crypt_keyslot_destroy wipes its key
// material area and unbinds the marker in one header write), then deletes
// the marker. Returns what was removed. kNotFound when there is no
// recovery keyslot (the header is then not written); kIo when the keyslot
// is gone but the marker could not be deleted (the message says so; the
// unbound marker counts as no recovery key); otherwise as
// ReadRecoveryKeyslot.
Result<RecoveryKeyslot> RemoveRecoveryKeyslot(const std::string& device);

}  // namespace vcrypt

#endif  // VCRYPT_DMTOOLS_VOLUME_H_
