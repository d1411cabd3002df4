// vcryptd's persistent state: the daemon config, provider configs and the
// VM inventory, under one state directory (default /var/lib/vcrypt):
//
//   state.json              {"version":1,"default_provider":"...",
//                            "kek_cache_max_age":{"<provider>":"15m",...}}
//   inventory.json          {"version":1,"vms":{...}} (see VmRecord)
//   providers/<name>/       one directory per provider, owned by it
//   vcryptd.lock            held by the one vcryptd using the directory
//                           (StateDirLock); holds its PID
//
// Every file is written atomically (common/atomic_file.h). The inventory
// is a convenience index: each volume's own header holds everything needed
// to open it, so losing this directory never loses data. Nothing here
// holds plaintext key material (native KEKs appear only wrapped).
//
// Not thread-safe: the Controller serialises access.
#ifndef VCRYPT_DAEMON_STATE_H_
#define VCRYPT_DAEMON_STATE_H_

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/handles.h"
#include "common/result.h"
#include "daemon/kek_cache.h"
#include "keyproviders/key_provider.h"

namespace vcrypt {

struct DiskRecord {
  std::string device;  // block device or image file path
  bool is_file = false;
  std::string uuid;    // LUKS2 UUID
  uint32_t sector_size = 4096;
};

// A shallow rekey (or provider change) that has started and not finished:
// the new KEK exists, some disks may carry it. Recorded before the first
// volume is touched, so a re-run after a crash finishes with the same KEK
// (docs/rekey.md).
struct PendingRekey {
  std::string provider;  // provider of the new KEK
  KekRef kek;            // the new KEK; never plaintext
  std::string started;   // RFC 3339 UTC
  // A deep rekey: each disk also gets a new DEK and its data is
  // reencrypted (docs/rekey.md); a disk is done when its token names the
  // new KEK.
  bool deep = false;
};

struct VmRecord {
  std::string provider;  // provider name
  KekRef kek;            // never plaintext
  bool auto_unlock = true;
  std::string created;   // RFC 3339 UTC
  std::map<std::string, DiskRecord> disks;
  std::optional<PendingRekey> rekey;
  // Set (RFC 3339 UTC) when the VM left this host by live migration
  // (docs/cluster.md): the boot path then neither opens its volumes nor
  // fetches its KEK. Cleared when the VM comes back (a migration in, a
  // start through the libvirt hook) or by `vm set --away off`.
  std::string away_since;
};

// One vcryptd per state directory: an exclusive open file description
// lock (fcntl F_OFD_SETLK) on <dir>/vcryptd.lock, held for the lifetime
// of this object. Two daemons on one directory would each overwrite the
// other's inventory and provider changes. An OFD lock (not flock(2), not
// a POSIX record lock) because it belongs to the open file, not the
// process: two acquisitions in one process conflict too, and the
// reencryption helper, which is vcryptd re-executed, inherits nothing
// (O_CLOEXEC). The kernel drops the lock when the holder dies, so a crash
// never leaves a stale lock; the file itself stays (removing it would
// let a third daemon lock a new file while a second holds the old one).
class StateDirLock {
 public:
  // Creates <dir>/vcryptd.lock (0600) if needed, locks it without waiting
  // and writes this process's PID into it. kBusy when another holder has
  // it: "state directory DIR is in use by vcryptd (pid N)", N read from the
  // file ("unknown" if the holder has not written it yet); kIo otherwise.
  // `dir` must exist.
  static Result<StateDirLock> Acquire(const std::string& dir);

  StateDirLock(StateDirLock&&) = default;
  StateDirLock& operator=(StateDirLock&&) = default;
  // Empties the file (no stale PID) and releases the lock.
  ~StateDirLock();

 private:
  explicit StateDirLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

class StateStore {
 public:
  // Creates the directory (0700) if needed and loads existing state.
  // kIo/kInvalidArgument when files are unreadable or malformed: the
  // daemon refuses to start rather than overwrite state it cannot read.
  static Result<StateStore> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::string ProviderDir(const std::string& name) const;

  const std::map<std::string, VmRecord>& vms() const { return vms_; }
  const std::optional<std::string>& default_provider() const {
    return default_provider_;
  }
  // Providers whose KEK cache max age was set (`provider set`,
  // `provider add --kek-cache-max-age`); the others use their type's
  // DefaultKekMaxAge.
  const std::map<std::string, KekMaxAge>& kek_max_ages() const {
    return kek_max_ages_;
  }

  // Each mutation is persisted before it returns; on failure the in-memory
  // state is unchanged.
  Status PutVm(const std::string& name, const VmRecord& vm);
  Status RemoveVm(const std::string& name);
  Status SetDefaultProvider(std::optional<std::string> name);
  // nullopt: back to the type's default.
  Status SetKekMaxAge(const std::string& provider,
                      std::optional<KekMaxAge> age);

 private:
  StateStore() = default;
  Status SaveInventory(const std::map<std::string, VmRecord>& vms) const;
  Status SaveState(const std::optional<std::string>& def,
                   const std::map<std::string, KekMaxAge>& ages) const;

  std::string dir_;
  std::map<std::string, VmRecord> vms_;
  std::optional<std::string> default_provider_;
  std::map<std::string, KekMaxAge> kek_max_ages_;
};

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_STATE_H_
