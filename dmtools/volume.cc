// LUKS2 format, header/token I/O, activation, loop devices and mapping
// enumeration. Over 800 lines: issue 14 splits it by those concerns, keeping
// the process-wide library lock in one place.
#include "dmtools/volume.h"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <type_traits>
#include <utility>

#include "common/handles.h"
#include "common/names.h"
#include "dmtools/reencrypt.h"
#include "dmtools/responsive.h"
#include "dmtools/stacking.h"
#include "dmtools/token.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------
// Library-wide setup and log capture.

// The last error-level message from libcryptsetup or libdevmapper on this
// thread. Both libraries call their log hooks synchronously in the calling
// thread, so a thread_local is an exact per-operation capture. Their error
// messages describe devices and states, never key bytes (key dumps exist
// only at debug level, which is never enabled here).
thread_local std::string t_last_log;

// Kept to one line: error messages are one line for an administrator.
void SetLastLog(const char* msg) {
  std::string m;
  for (const char* p = msg; *p != '\0' && m.size() < 300; ++p) {
    unsigned char c = static_cast<unsigned char>(*p);
    m += (c < 0x20 || c == 0x7f) ? ' ' : *p;
  }
  while (!m.empty() && m.back() == ' ') m.pop_back();
  if (m.size() > 1 && m.back() == '.') m.pop_back();
  t_last_log = std::move(m);
}

void CryptLog(int level, const char* msg, void* /*usrptr*/) {
  // Libraries do not print: everything is dropped except the last error,
  // which may be appended to our own error message.
  if (level != CRYPT_LOG_ERROR || msg == nullptr) return;
  SetLastLog(msg);
}

void DmLog(int level, const char* /*file*/, int /*line*/, int /*dm_errno*/,
           const char* f, ...) __attribute__((format(printf, 5, 6)));
void DmLog(int level, const char* /*file*/, int /*line*/, int /*dm_errno*/,
           const char* f, ...) {
  if ((level & 7) > 3 || f == nullptr) return;  // keep errors only (LOG_ERR)
  char buf[512];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof(buf), f, ap);
  va_end(ap);
  SetLastLog(buf);
}

// libcryptsetup's device-mapper backend keeps process-wide state (the
// crypt_device it logs through and a plain use count whose drop to zero
// releases libdevmapper's caches), and libdevmapper itself is not
// thread-safe. vcryptd opens volumes from several threads, so every call
// into either library is made under this one lock. It is recursive because
// public functions here call each other (Activate -> Deactivate). The
// calls are short (no PBKDF: vcrypt volumes have no keyslots, except for
// adding a recovery keyslot, which holds it for seconds); the KEK
// fetch, which is slow, happens outside this library.
std::recursive_mutex g_lib_mu;

using LibLock = std::unique_lock<std::recursive_mutex>;

// Takes the library lock and sets up the libraries; hold the result for
// as long as any libcryptsetup/libdevmapper handle is alive.
[[nodiscard]] LibLock InitLibraries() {
  LibLock lock(g_lib_mu);
  static std::once_flag once;
  std::call_once(once, [] {
    // Default callback for every crypt_device without its own (that is all
    // of ours) and for messages logged before a handle exists.
    crypt_set_log_callback(nullptr, CryptLog, nullptr);
    // Put the DEK directly into the dm-crypt table instead of the kernel
    // keyring. With the keyring, libcryptsetup 2.6 leaves the key in the
    // activating thread's keyring after a successful activation, where it
    // lingers for the life of that thread in a long-running daemon. This
    // setting is process-wide in libcryptsetup (the cd argument is
    // ignored).
    crypt_volume_key_keyring(nullptr, 0);
    // vcrypt's token types are handled here, never by a plugin. Without
    // this, libcryptsetup dlopen()s libcryptsetup-token-<type>.so for every
    // token it looks at: a root daemon would load code named by a header
    // field, and each failed attempt leaves a dlerror() buffer behind in
    // the calling thread (LeakSanitizer reports it when that thread is
    // still running at exit).
    crypt_token_external_disable();
  });
  t_last_log.clear();
  return lock;
}

// libcryptsetup resets libdevmapper's log hook to the stderr default when
// its last handle goes away, so ours is re-installed before every direct
// libdevmapper call.
void QuietDm() { dm_log_with_errno_init(DmLog); }

std::string WithLibMessage(std::string msg) {
  if (!t_last_log.empty()) msg += " (" + t_last_log + ")";
  return msg;
}

std::string ErrnoText(int r) { return std::strerror(r < 0 ? -r : r); }

Error Fail(ErrorCode code, const std::string& what, int r) {
  return MakeError(code, WithLibMessage(what + ": " + ErrnoText(r)));
}

// DM_NAME_LEN from <linux/dm-ioctl.h>, including the NUL.
constexpr size_t kDmNameLen = 128;

Status ValidateMappingName(const std::string& name) {
  for (char c : name) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "device-mapper name contains a space or control "
                       "character");
    }
  }
  if (name.empty() || name.size() >= kDmNameLen || name == "." ||
      name == ".." || name.find('/') != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + name.substr(0, kDmNameLen) +
                         "' is not a valid device-mapper name");
  }
  return Status::Ok();
}

Error NoDm() {
  return MakeError(ErrorCode::kNoDeviceMapper,
                   "device-mapper not available in this kernel (no "
                   "/dev/mapper/control or the dm driver does not answer); "
                   "load the dm-mod and dm-crypt modules");
}

// ---------------------------------------------------------------------------
// Small file and sysfs helpers.

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string SysDevBlock(dev_t dev) {
  return "/sys/dev/block/" + std::to_string(major(dev)) + ":" +
         std::to_string(minor(dev));
}

// /dev/<kernel name> of a block device number, from its uevent.
std::string DevicePathOf(dev_t dev) {
  if (auto uevent = ReadSmallFile(SysDevBlock(dev) + "/uevent")) {
    std::istringstream in(*uevent);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("DEVNAME=", 0) == 0) return "/dev/" + line.substr(8);
    }
  }
  return "";
}

// Whether the whole disk behind a block device number is non-rotational;
// nullopt when sysfs does not say.
std::optional<bool> NonRotationalDev(dev_t dev) {
  std::string base = SysDevBlock(dev);
  std::error_code ec;
  if (!fs::exists(base, ec)) return std::nullopt;
  // Partitions have no queue/ of their own; the disk is the parent.
  if (fs::exists(base + "/partition", ec)) base += "/..";
  auto rot = ReadSmallFile(base + "/queue/rotational");
  if (!rot) return std::nullopt;
  if (*rot == "0") return true;
  if (*rot == "1") return false;
  return std::nullopt;
}

// The block device a file system with an anonymous st_dev (btrfs, for
// instance) was mounted from, via /proc/self/mountinfo.
std::optional<dev_t> MountSourceDevice(dev_t st_dev) {
  std::ifstream in("/proc/self/mountinfo");
  std::string want =
      std::to_string(major(st_dev)) + ":" + std::to_string(minor(st_dev));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, majmin;
    ls >> id >> parent >> majmin;
    if (majmin != want) continue;
    size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream rest(line.substr(sep + 3));
    std::string fstype, source;
    rest >> fstype >> source;
    if (source.rfind("/dev/", 0) != 0) return std::nullopt;
    struct stat st;
    if (stat(source.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) {
      return std::nullopt;
    }
    return st.st_rdev;
  }
  return std::nullopt;
}

// True/false when the storage under `device` (a block device, or the file
// system a regular file lives on) is known to be non-rotational or
// rotational; nullopt when it cannot be told (tmpfs, overlayfs, network
// file systems).
std::optional<bool> IsNonRotational(const std::string& device) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) return std::nullopt;
  if (S_ISBLK(st.st_mode)) return NonRotationalDev(st.st_rdev);
  if (!S_ISREG(st.st_mode)) return std::nullopt;
  if (major(st.st_dev) != 0) return NonRotationalDev(st.st_dev);
  if (auto src = MountSourceDevice(st.st_dev)) return NonRotationalDev(*src);
  return std::nullopt;
}

// Loop devices currently bound to the regular file `path`.
// The loop devices whose backing file is the inode (dev, ino): compared
// by inode, not by name, so no alias of the path (a link, a rename) hides
// one.
std::vector<std::string> LoopDevicesBackedBy(dev_t dev, ino_t ino) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/block", ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind("loop", 0) != 0) continue;
    auto f = ReadSmallFile(e.path().string() + "/loop/backing_file");
    struct stat st;
    if (f && stat(f->c_str(), &st) == 0 && st.st_dev == dev && st.st_ino == ino)
      out.push_back("/dev/" + n);
  }
  return out;
}

// Size in bytes and logical block size of a block device or regular file.
struct DeviceGeometry {
  bool is_block = false;
  uint64_t size = 0;
  uint32_t logical_block = 512;
};

Result<DeviceGeometry> Geometry(const std::string& device) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return MakeError(ErrorCode::kNotFound,
                       "device or file " + device + " does not exist");
    }
    return MakeError(ErrorCode::kIo,
                     "cannot stat " + device + ": " + ErrnoText(errno));
  }
  DeviceGeometry g;
  if (S_ISREG(st.st_mode)) {
    g.size = static_cast<uint64_t>(st.st_size);
    return g;
  }
  if (!S_ISBLK(st.st_mode)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " is neither a block device nor a regular file");
  }
  g.is_block = true;
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return MakeError(ErrorCode::kIo,
                     "cannot open " + device + ": " + ErrnoText(errno));
  }
  uint64_t size = 0;
  int lbs = 0;
  if (ioctl(fd.get(), BLKGETSIZE64, &size) != 0 ||
      ioctl(fd.get(), BLKSSZGET, &lbs) != 0) {
    return MakeError(ErrorCode::kIo, "cannot get the size of " + device + ": " +
                                         ErrnoText(errno));
  }
  g.size = size;
  g.logical_block = static_cast<uint32_t>(lbs);
  return g;
}

// ---------------------------------------------------------------------------
// Signature probing (libblkid).

using BlkidProbePtr =
    std::unique_ptr<blkid_struct_probe,
                    FnDeleter<blkid_struct_probe, blkid_free_probe>>;

struct Signature {
  // "a LUKS header (UUID ...)", "an ext4 signature", "a dos partition
  // table", ...; empty when the device carries no known signature.
  std::string description;
  std::optional<std::string> luks_uuid;  // set for a LUKS header
};

// The first signature libblkid finds on `device` (superblocks, including
// LUKS1/LUKS2 headers, and partition tables).
Result<Signature> ProbeSignature(const std::string& device) {
  BlkidProbePtr pr(blkid_new_probe_from_filename(device.c_str()));
  if (!pr) {
    return MakeError(
        ErrorCode::kIo,
        "cannot probe " + device + " for signatures: " + ErrnoText(errno));
  }
  blkid_probe_enable_superblocks(pr.get(), 1);
  blkid_probe_set_superblocks_flags(
      pr.get(), BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_MAGIC);
  blkid_probe_enable_partitions(pr.get(), 1);
  blkid_probe_set_partitions_flags(pr.get(), BLKID_PARTS_MAGIC);
  int r = blkid_do_safeprobe(pr.get());
  Signature sig;
  if (r == 1) return sig;
  if (r == -2) {
    sig.description = "more than one (ambivalent) signature";
    return sig;
  }
  if (r < 0) {
    return MakeError(ErrorCode::kIo,
                     "cannot probe " + device + " for signatures");
  }
  const char* value = nullptr;
  if (blkid_probe_lookup_value(pr.get(), "TYPE", &value, nullptr) == 0 &&
      value != nullptr) {
    std::string type(value);
    if (type == "crypto_LUKS") {
      sig.description = "a LUKS header";
      sig.luks_uuid = "";
      if (blkid_probe_lookup_value(pr.get(), "UUID", &value, nullptr) == 0 &&
          value != nullptr) {
        sig.luks_uuid = value;
        sig.description += " (UUID " + std::string(value) + ")";
      }
      return sig;
    }
    sig.description = "a " + type + " signature";
    return sig;
  }
  if (blkid_probe_lookup_value(pr.get(), "PTTYPE", &value, nullptr) == 0 &&
      value != nullptr) {
    sig.description = "a " + std::string(value) + " partition table";
    return sig;
  }
  sig.description = "an unidentified signature";
  return sig;
}

// Overwrites [0, length) of `device` with zeros and syncs. Used to undo a
// format that did not complete, so no half-made LUKS header remains.
Status ZeroHeaderArea(const std::string& device, uint64_t length) {
  UniqueFd fd(open(device.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return MakeError(
        ErrorCode::kIo,
        "cannot open " + device + " to wipe the header: " + ErrnoText(errno));
  }
  std::vector<uint8_t> zeros(1 << 20, 0);
  uint64_t off = 0;
  while (off < length) {
    size_t n =
        static_cast<size_t>(std::min<uint64_t>(zeros.size(), length - off));
    ssize_t w = pwrite(fd.get(), zeros.data(), n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      return MakeError(ErrorCode::kIo, "cannot wipe the header of " + device +
                                           ": " + ErrnoText(errno));
    }
    off += static_cast<uint64_t>(w);
  }
  if (fsync(fd.get()) != 0) {
    return MakeError(ErrorCode::kIo,
                     "cannot sync " + device + ": " + ErrnoText(errno));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// libcryptsetup helpers.

Result<CryptDevicePtr> InitCrypt(const std::string& device) {
  crypt_device* raw = nullptr;
  int r = crypt_init(&raw, device.c_str());
  CryptDevicePtr cd(raw);
  if (r < 0) {
    if (r == -ENOENT || r == -ENOTBLK) {
      return MakeError(ErrorCode::kNotFound,
                       "device or file " + device + " does not exist");
    }
    return Fail(ErrorCode::kIo, "cannot open " + device, r);
  }
  return cd;
}

// Loads a LUKS2 header; LUKS1 and non-LUKS devices are kInvalidVolume.
Status LoadLuks2(crypt_device* cd, const std::string& device) {
  int r = crypt_load(cd, CRYPT_LUKS, nullptr);
  if (r == -EINVAL || r == -ENXIO) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " is not a LUKS2 volume (no valid LUKS header)");
  }
  if (r < 0)
    return Fail(ErrorCode::kIo, "cannot read the LUKS header of " + device, r);
  const char* type = crypt_get_type(cd);
  if (type == nullptr || std::strcmp(type, CRYPT_LUKS2) != 0) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " is a " + (type ? type : "unknown") +
                         " volume, not a vcrypt (LUKS2) volume");
  }
  return Status::Ok();
}

// Ids of all tokens of type "vcrypt".
// The LUKS2 header of `device` loaded into a new handle, after checking
// that the device exists and is readable (Geometry gives the clear
// not-found / not-a-device errors).
Result<CryptDevicePtr> OpenLuks2(const std::string& device) {
  VCRYPT_ASSIGN_OR_RETURN(DeviceGeometry geo, Geometry(device));
  (void)geo;
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, InitCrypt(device));
  VCRYPT_RETURN_IF_ERROR(LoadLuks2(cd.get(), device));
  return cd;
}

std::vector<int> VcryptTokenIds(crypt_device* cd) {
  std::vector<int> ids;
  int max = crypt_token_max(CRYPT_LUKS2);
  for (int i = 0; i < max; ++i) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd, i, &type);
    if (info == CRYPT_TOKEN_INVALID || info == CRYPT_TOKEN_INACTIVE) continue;
    if (type != nullptr && std::string_view(type) == kTokenType) {
      ids.push_back(i);
    }
  }
  return ids;
}

// Checks token JSON before it goes into a header.
Status CheckTokenJson(const std::string& json) {
  if (json.size() > kMaxTokenSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "vcrypt token is " + std::to_string(json.size()) +
                         " bytes, more than the " +
                         std::to_string(kMaxTokenSize) + " allowed");
  }
  auto parsed = VcryptToken::Parse(json);
  if (!parsed.ok()) {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "refusing to write a bad token: " + parsed.error().message);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// libdevmapper helpers.

struct DmInfo {
  bool exists = false;
  int open_count = 0;
  bool suspended = false;
  std::string dm_uuid;
};

Result<DmTaskPtr> RunDmTask(int type, const std::string& name,
                            bool secure = false) {
  QuietDm();
  DmTaskPtr dmt(dm_task_create(type));
  if (!dmt) return MakeError(ErrorCode::kInternal, "dm_task_create failed");
  if (!name.empty() && !dm_task_set_name(dmt.get(), name.c_str())) {
    return MakeError(ErrorCode::kInternal, "dm_task_set_name failed");
  }
  // libdevmapper wipes its ioctl buffers for tasks that carry keys.
  if (secure && !dm_task_secure_data(dmt.get())) {
    return MakeError(ErrorCode::kInternal, "dm_task_secure_data failed");
  }
  if (!dm_task_run(dmt.get())) {
    if (!DeviceMapperAvailable()) return NoDm();
    return MakeError(
        ErrorCode::kIo,
        WithLibMessage("device-mapper request failed" +
                       (name.empty() ? std::string() : " for " + name)));
  }
  return dmt;
}

Result<DmInfo> GetDmInfo(const std::string& name) {
  VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt, RunDmTask(DM_DEVICE_INFO, name));
  struct dm_info info;
  if (!dm_task_get_info(dmt.get(), &info)) {
    return MakeError(ErrorCode::kIo,
                     "cannot read device-mapper info of " + name);
  }
  DmInfo out;
  out.exists = info.exists != 0;
  if (!out.exists) return out;
  out.open_count = info.open_count;
  out.suspended = info.suspended != 0;
  const char* uuid = dm_task_get_uuid(dmt.get());
  if (uuid != nullptr) out.dm_uuid = uuid;
  return out;
}

Result<std::vector<std::string>> ListDmNames() {
  VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt, RunDmTask(DM_DEVICE_LIST, ""));
  std::vector<std::string> names;
  struct dm_names* n = dm_task_get_names(dmt.get());
  if (n == nullptr || n->dev == 0) return names;  // no devices
  for (;;) {
    names.emplace_back(n->name);
    if (n->next == 0) break;
    n = reinterpret_cast<struct dm_names*>(reinterpret_cast<char*>(n) +
                                           n->next);
  }
  return names;
}

// "CRYPT-LUKS2-<32 hex>-<name>" -> canonical 8-4-4-4-12 UUID, or "".
std::string LuksUuidFromDmUuid(const std::string& dm_uuid) {
  static constexpr std::string_view kPrefix = "CRYPT-LUKS2-";
  if (dm_uuid.rfind(kPrefix, 0) != 0) return "";
  std::string hex = dm_uuid.substr(kPrefix.size(), 32);
  if (hex.size() != 32 || dm_uuid.size() < kPrefix.size() + 33 ||
      dm_uuid[kPrefix.size() + 32] != '-') {
    return "";
  }
  for (char c : hex) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return "";
  }
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) +
         "-" + hex.substr(16, 4) + "-" + hex.substr(20);
}

// Lower-case hex without dashes, for comparing UUIDs.
std::string CompactUuid(std::string_view uuid) {
  std::string out;
  for (char c : uuid) {
    if (c != '-')
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// Parses a dm-crypt table line into `m` without copying the key: the key
// field is only measured. Layout: <cipher> <key> <iv_offset> <device>
// <offset> [<#opt> <opt>...].
void ParseCryptTable(const char* params, MappingInfo& m) {
  std::string_view p(params);
  auto next = [&p]() {
    while (!p.empty() && p.front() == ' ') p.remove_prefix(1);
    size_t end = p.find(' ');
    std::string_view tok = p.substr(0, end);
    p.remove_prefix(end == std::string_view::npos ? p.size() : end);
    return tok;
  };
  m.cipher = std::string(next());
  std::string_view key = next();
  if (!key.empty() && key.front() == ':') {
    // ":<size>:<type>:<description>" - the key lives in the kernel keyring.
    m.key_in_keyring = true;
    std::string_view rest = key.substr(1);
    uint32_t bytes = 0;
    for (char c : rest.substr(0, rest.find(':'))) {
      if (c < '0' || c > '9') break;
      bytes = bytes * 10 + static_cast<uint32_t>(c - '0');
    }
    m.key_bits = bytes * 8;
  } else if (key != "-") {
    m.key_bits = static_cast<uint32_t>(key.size() * 4);
  }
  next();  // iv_offset
  next();  // device
  next();  // offset
  std::string_view count = next();
  int n = 0;
  for (char c : count) {
    if (c < '0' || c > '9') break;
    n = n * 10 + (c - '0');
  }
  for (int i = 0; i < n; ++i) {
    std::string_view opt = next();
    if (opt.empty()) break;
    m.options.emplace_back(opt);
  }
}

Result<MappingInfo> QueryMappingImpl(const std::string& name) {
  VCRYPT_ASSIGN_OR_RETURN(DmInfo info, GetDmInfo(name));
  if (!info.exists) {
    return MakeError(ErrorCode::kNotFound, "no device-mapper mapping " + name);
  }
  MappingInfo m;
  m.name = name;
  m.path = "/dev/mapper/" + name;
  m.dm_uuid = info.dm_uuid;
  m.luks_uuid = LuksUuidFromDmUuid(info.dm_uuid);
  m.open_count = info.open_count;
  m.suspended = info.suspended;

  {
    VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt,
                            RunDmTask(DM_DEVICE_TABLE, name, /*secure=*/true));
    uint64_t start = 0, length = 0;
    char* type = nullptr;
    char* params = nullptr;
    void* next = nullptr;
    int targets = 0;
    do {
      next =
          dm_get_next_target(dmt.get(), next, &start, &length, &type, &params);
      if (type == nullptr) break;
      ++targets;
      m.size_bytes += length * 512;
      if (targets == 1) {
        m.target = type;
        if (m.target == "crypt" && params != nullptr) {
          ParseCryptTable(params, m);
        }
      }
    } while (next != nullptr);
    m.target_count = targets;
    // dmt (and with it the key text in its buffer) is wiped on destruction
    // because the task was marked secure.
  }

  {
    VCRYPT_ASSIGN_OR_RETURN(DmTaskPtr dmt, RunDmTask(DM_DEVICE_DEPS, name));
    struct dm_deps* deps = dm_task_get_deps(dmt.get());
    if (deps != nullptr && deps->count > 0) {
      dev_t dev = makedev(major(deps->device[0]), minor(deps->device[0]));
      m.backing = DevicePathOf(dev);
      if (auto f = ReadSmallFile(SysDevBlock(dev) + "/loop/backing_file")) {
        m.backing_file = *f;
      }
    }
  }
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------

bool DeviceMapperAvailable() {
  // Without the control node libdevmapper would try to mknod it, and on a
  // kernel without dm it would then log to stderr; check the node first.
  if (access("/dev/mapper/control", F_OK) != 0) return false;
  LibLock lock(g_lib_mu);
  QuietDm();
  char version[64];
  return dm_driver_version(version, sizeof(version)) != 0;
}

Result<std::string> FormatVolume(const FormatParams& params,
                                 const SecureBuffer& dek,
                                 const TokenMaker& make_token) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(params.device));
  auto lib = InitLibraries();
  const std::string& device = params.device;
  if (params.sector_size != 512 && params.sector_size != 4096) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "sector size " + std::to_string(params.sector_size) +
                         " is not supported; use 512 or 4096");
  }
  if (dek.size() != kDekSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the DEK must be " + std::to_string(kDekSize) +
                         " bytes, not " + std::to_string(dek.size()));
  }
  if (params.label.empty() || params.label.size() > kMaxLabelLength) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the LUKS2 label must be 1 to " +
                         std::to_string(kMaxLabelLength) + " bytes");
  }
  if (!make_token) {
    return MakeError(ErrorCode::kInternal, "FormatVolume without a TokenMaker");
  }

  // The path is resolved once. Every check below and the format itself
  // work on the inode this open found, through /proc/self/fd/N, so a
  // symlink or file swapped in at the path meanwhile cannot redirect the
  // format (the checks passing on one device, the format hitting another).
  // O_NONBLOCK: opening a FIFO put there must not hang.
  UniqueFd pin;
  if (params.fd >= 0) {
    pin.reset(fcntl(params.fd, F_DUPFD_CLOEXEC, 0));
  } else {
    pin.reset(
        open(device.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  }
  if (!pin.valid()) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return MakeError(ErrorCode::kNotFound,
                       "device or file " + device + " does not exist");
    }
    return MakeError(ErrorCode::kIo,
                     "cannot open " + device + ": " + ErrnoText(errno));
  }
  const std::string path = "/proc/self/fd/" + std::to_string(pin.get());
  // Errors name what the caller named, not the /proc path.
  auto named = [&](Error e) {
    for (size_t at; (at = e.message.find(path)) != std::string::npos;)
      e.message.replace(at, path.size(), device);
    return e;
  };
  // Never format guest content, root or not, force or not: a vcrypt
  // mapping, or anything stacked on one (a guest's LV that the host
  // activated), is a VM's disk in clear, and a header written there is
  // written into that VM's disk (docs/boot.md, "Guest content stays the
  // guest's"). Decided by the device number of what `pin` found, so a path
  // swapped meanwhile changes nothing. A stack that cannot be read might be
  // guest content: refused too.
  auto below = VcryptMappingBelowFd(pin.get());
  if (!below.ok()) {
    return MakeError(below.error().code, "cannot tell whether " + device +
                                             " holds a VM's disk in clear (" +
                                             below.error().message +
                                             "); refusing to format it");
  }
  if (*below) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " is guest content (on vcrypt mapping " +
                         **below +
                         "): it holds a VM's disk in clear; refusing to "
                         "format it");
  }
  auto geo_r = Geometry(path);
  if (!geo_r.ok()) return named(std::move(geo_r).error());
  const DeviceGeometry geo = *geo_r;
  if (geo.size < kMinVolumeSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " is " + std::to_string(geo.size) +
                         " bytes; a vcrypt volume needs at least " +
                         std::to_string(kMinVolumeSize >> 20) + " MiB (" +
                         std::to_string(kLuks2HeaderSize >> 20) +
                         " MiB LUKS2 header and 1 MiB of data)");
  }
  if (geo.size % params.sector_size != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " size " + std::to_string(geo.size) +
                         " is not a multiple of the sector size " +
                         std::to_string(params.sector_size));
  }
  if (geo.logical_block > params.sector_size) {
    return MakeError(ErrorCode::kInvalidArgument,
                     device + " has " + std::to_string(geo.logical_block) +
                         "-byte logical blocks; sector size " +
                         std::to_string(params.sector_size) +
                         " is not possible on it");
  }

  // Never format something in use, even with force: a mounted file system
  // or an open mapping would be corrupted underneath its user.
  if (geo.is_block) {
    UniqueFd excl(open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
    if (!excl.valid() && errno == EBUSY) {
      return MakeError(ErrorCode::kBusy,
                       device +
                           " is in use (mounted, mapped or held by "
                           "another program); release it first");
    }
  } else {
    struct stat st;
    if (fstat(pin.get(), &st) != 0) {
      return MakeError(ErrorCode::kIo,
                       "cannot stat " + device + ": " + ErrnoText(errno));
    }
    auto loops = LoopDevicesBackedBy(st.st_dev, st.st_ino);
    if (!loops.empty()) {
      return MakeError(ErrorCode::kBusy, device + " is in use (attached to " +
                                             loops.front() +
                                             "); close whatever uses it first");
    }
  }

  auto before_r = ProbeSignature(path);
  if (!before_r.ok()) return named(std::move(before_r).error());
  const Signature before = *before_r;
  if (!params.force && !before.description.empty()) {
    return MakeError(ErrorCode::kExists,
                     device + " already contains " + before.description +
                         "; refusing to overwrite it without --force");
  }

  auto cd_r = InitCrypt(path);
  if (!cd_r.ok()) return named(std::move(cd_r).error());
  CryptDevicePtr cd = std::move(cd_r).value();

  // Undoes a format that failed after it began writing: the whole LUKS2
  // area is zeroed again (crypt_format zeroes it before writing the
  // header, so nothing of value is lost by zeroing it), so that no
  // half-made volume is left for udev, blkid or a later open to find.
  auto undo = [&](Error e) -> Error {
    uint64_t off = crypt_get_data_offset(cd.get()) * 512;
    uint64_t len =
        std::min<uint64_t>(std::max<uint64_t>(off, kLuks2HeaderSize), geo.size);
    cd.reset();  // release libcryptsetup's fds and locks first
    Status st = ZeroHeaderArea(path, len);
    if (!st.ok()) {
      e.message +=
          "; wiping the partial header also failed: " + st.error().message;
    }
    return e;
  };

  // The LUKS2 digest over the volume key: PBKDF2 with libcryptsetup's
  // minimum iteration count instead of a benchmarked one (~125 ms of
  // hashing at every open, and a multi-second benchmark at every format).
  // Iterations only slow down guessing of low-entropy secrets; the DEK is
  // 512 random bits. No keyslot is created, so this PBKDF is used for
  // nothing else.
  struct crypt_pbkdf_type digest_kdf = {};
  digest_kdf.type = CRYPT_KDF_PBKDF2;
  digest_kdf.hash = "sha256";
  digest_kdf.iterations = 1000;
  digest_kdf.flags = CRYPT_PBKDF_NO_BENCHMARK;

  struct crypt_params_luks2 p = {};
  p.pbkdf = &digest_kdf;
  p.sector_size = params.sector_size;
  p.label = params.label.c_str();
  p.subsystem = kSubsystem.data();
  int r = crypt_format(cd.get(), CRYPT_LUKS2, "aes", "xts-plain64", nullptr,
                       dek.chars(), dek.size(), &p);
  if (r < 0) {
    Error e = Fail(r == -EBUSY ? ErrorCode::kBusy : ErrorCode::kIo,
                   "cannot format " + device, r);
    // crypt_format can fail before it writes anything (then the device is
    // as it was and must stay so) or part-way through. Wipe only when a
    // LUKS header that was not there before is now found.
    cd.reset();
    auto after = ProbeSignature(path);
    bool ours = after.ok() && after->luks_uuid.has_value() &&
                after->luks_uuid != before.luks_uuid;
    if (!ours) return e;
    Status st =
        ZeroHeaderArea(path, std::min<uint64_t>(kLuks2HeaderSize, geo.size));
    if (!st.ok()) {
      e.message +=
          "; wiping the partial header also failed: " + st.error().message;
    }
    return e;
  }
  uint64_t data_offset = crypt_get_data_offset(cd.get()) * 512;
  if (data_offset + (1 << 20) > geo.size) {
    return undo(MakeError(ErrorCode::kInvalidArgument,
                          device + " is too small for the LUKS2 header (" +
                              std::to_string(data_offset) +
                              " bytes here) plus 1 MiB of data"));
  }
  const char* uuid_c = crypt_get_uuid(cd.get());
  if (uuid_c == nullptr) {
    return undo(MakeError(ErrorCode::kInternal,
                          "libcryptsetup returned no UUID after format"));
  }
  std::string uuid(uuid_c);

  Result<std::string> token = make_token(uuid);
  if (!token.ok()) return undo(std::move(token).error());
  if (Status st = CheckTokenJson(*token); !st.ok()) {
    return undo(std::move(st).error());
  }
  r = crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN, token->c_str());
  if (r < 0) {
    return undo(
        Fail(ErrorCode::kIo, "cannot write the vcrypt token to " + device, r));
  }
  return uuid;
}

Result<VolumeHeader> ReadHeader(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = InitLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2(device));

  VolumeHeader h;
  h.device = device;
  auto str = [](const char* s) { return s ? std::string(s) : std::string(); };
  h.uuid = str(crypt_get_uuid(cd.get()));
  h.label = str(crypt_get_label(cd.get()));
  h.subsystem = str(crypt_get_subsystem(cd.get()));
  std::string cipher = str(crypt_get_cipher(cd.get()));
  std::string mode = str(crypt_get_cipher_mode(cd.get()));
  h.cipher = mode.empty() ? cipher : cipher + "-" + mode;
  // LUKS2 records the volume key size only in keyslots; with none,
  // libcryptsetup reports 0 (see the key_bits contract in volume.h).
  int ks = crypt_get_volume_key_size(cd.get());
  h.key_bits = ks > 0 ? static_cast<uint32_t>(ks) * 8 : 0;
  int ss = crypt_get_sector_size(cd.get());
  h.sector_size = ss > 0 ? static_cast<uint32_t>(ss) : 0;
  h.data_offset = crypt_get_data_offset(cd.get()) * 512;
  int max_slots = crypt_keyslot_max(CRYPT_LUKS2);
  for (int i = 0; i < max_slots; ++i) {
    crypt_keyslot_info ki = crypt_keyslot_status(cd.get(), i);
    if (ki != CRYPT_SLOT_INACTIVE && ki != CRYPT_SLOT_INVALID) {
      ++h.active_keyslots;
    }
  }
  std::vector<int> ids = VcryptTokenIds(cd.get());
  if (ids.size() > 1) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has " + std::to_string(ids.size()) +
                         " vcrypt tokens; a vcrypt volume has exactly one");
  }
  for (int i = 0; i < crypt_token_max(CRYPT_LUKS2) && !h.deep_rekey_marker; ++i) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd.get(), i, &type);
    h.deep_rekey_marker = info != CRYPT_TOKEN_INVALID && info != CRYPT_TOKEN_INACTIVE &&
                          type != nullptr && std::string_view(type) == kReencryptTokenType;
  }
  if (ids.size() == 1) {
    const char* json = nullptr;
    int r = crypt_token_json_get(cd.get(), ids[0], &json);
    if (r < 0 || json == nullptr) {
      return Fail(ErrorCode::kIo, "cannot read the vcrypt token of " + device,
                  r);
    }
    h.token_json = std::string(json);
    h.token_id = ids[0];
    if (h.key_bits == 0) {
      // The wrapped DEK has the DEK's length (AES-GCM is length
      // preserving).
      auto t = VcryptToken::Parse(*h.token_json);
      if (t.ok())
        h.key_bits = static_cast<uint32_t>(t->dek.ciphertext.size()) * 8;
    }
  }
  return h;
}

Status WriteToken(const std::string& device, const std::string& token_json) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = InitLibraries();
  VCRYPT_RETURN_IF_ERROR(CheckTokenJson(token_json));
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2(device));
  std::vector<int> ids = VcryptTokenIds(cd.get());
  if (ids.size() > 1) {
    return MakeError(ErrorCode::kInvalidVolume,
                     device + " has " + std::to_string(ids.size()) +
                         " vcrypt tokens; refusing to choose one to replace");
  }
  // Replacing under the same id is one header update (both copies, with
  // libcryptsetup's metadata lock held), so readers see old or new.
  int id = ids.empty() ? CRYPT_ANY_TOKEN : ids[0];
  int r = crypt_token_json_set(cd.get(), id, token_json.c_str());
  if (r < 0) {
    return Fail(r == -ENOSPC ? ErrorCode::kInvalidArgument : ErrorCode::kIo,
                "cannot write the vcrypt token to " + device, r);
  }
  return Status::Ok();
}

Status VerifyDek(const std::string& device, const SecureBuffer& dek) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = InitLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2(device));
  int r = crypt_activate_by_volume_key(cd.get(), nullptr, dek.chars(),
                                       dek.size(), 0);
  if (r == -EPERM || r == -EINVAL)
    return MakeError(ErrorCode::kCrypto,
                     "the key does not match the LUKS2 digest of " + device);
  if (r < 0) return Fail(ErrorCode::kIo, "cannot check the key of " + device, r);
  return Status::Ok();
}

Status EraseKeyMaterial(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = InitLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2(device));
  // A mapped volume keeps its key in the dm table; erasing under it would
  // leave a running volume whose key exists nowhere else.
  if (DeviceMapperAvailable()) {
    const char* uuid = crypt_get_uuid(cd.get());
    VCRYPT_ASSIGN_OR_RETURN(auto mapped,
                            FindMappingByUuid(uuid != nullptr ? uuid : ""));
    if (mapped)
      return MakeError(ErrorCode::kBusy, device + " is open as " + mapped->path +
                                             "; close it before erasing");
  }
  for (int id = 0; id < crypt_token_max(CRYPT_LUKS2); ++id) {
    const char* type = nullptr;
    if (crypt_token_status(cd.get(), id, &type) == CRYPT_TOKEN_INACTIVE) continue;
    int r = crypt_token_json_set(cd.get(), id, nullptr);
    if (r < 0) return Fail(ErrorCode::kIo, "cannot remove token " + std::to_string(id) +
                                               " of " + device, r);
  }
  for (int slot = 0; slot < crypt_keyslot_max(CRYPT_LUKS2); ++slot) {
    if (crypt_keyslot_status(cd.get(), slot) == CRYPT_SLOT_INACTIVE) continue;
    int r = crypt_keyslot_destroy(cd.get(), slot);
    if (r < 0) return Fail(ErrorCode::kIo, "cannot destroy keyslot " + std::to_string(slot) +
                                               " of " + device, r);
  }
  return Status::Ok();
}

namespace {

// Activation with the checks common to a DEK and a passphrase; `activate`
// makes the libcryptsetup call with the given flags.
using ActivateCall = std::function<int(crypt_device* cd, uint32_t flags)>;

Result<std::string> ActivateWith(const ActivateParams& params,
                                 const ActivateCall& activate);

}  // namespace

Result<std::string> Activate(const ActivateParams& params,
                             const SecureBuffer& dek) {
  auto lib = InitLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(params.name));
  if (dek.size() != kDekSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the DEK must be " + std::to_string(kDekSize) +
                         " bytes, not " + std::to_string(dek.size()));
  }
  return ActivateWith(params, [&](crypt_device* cd, uint32_t flags) {
    return crypt_activate_by_volume_key(cd, params.name.c_str(), dek.chars(),
                                        dek.size(), flags);
  });
}

Result<std::string> ActivateByPassphrase(const ActivateParams& params,
                                         const SecureBuffer& passphrase) {
  auto lib = InitLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(params.name));
  if (passphrase.size() == 0)
    return MakeError(ErrorCode::kInvalidArgument, "empty passphrase");
  return ActivateWith(params, [&](crypt_device* cd, uint32_t flags) {
    return crypt_activate_by_passphrase(cd, params.name.c_str(), CRYPT_ANY_SLOT,
                                        passphrase.chars(), passphrase.size(),
                                        flags);
  });
}

namespace {

Result<std::string> ActivateWith(const ActivateParams& params,
                                 const ActivateCall& activate) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(params.device));
  auto lib = InitLibraries();
  const std::string& device = params.device;
  if (!DeviceMapperAvailable()) return NoDm();
  VCRYPT_ASSIGN_OR_RETURN(DeviceGeometry geo, Geometry(device));
  (void)geo;

  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, InitCrypt(device));
  VCRYPT_RETURN_IF_ERROR(LoadLuks2(cd.get(), device));

  VCRYPT_ASSIGN_OR_RETURN(DmInfo existing, GetDmInfo(params.name));
  if (existing.exists) {
    return MakeError(ErrorCode::kBusy, "a mapping named " + params.name +
                                           " already exists (/dev/mapper/" +
                                           params.name + "); close it first");
  }
  const char* uuid_c = crypt_get_uuid(cd.get());
  std::string uuid = uuid_c ? uuid_c : "";
  if (!uuid.empty()) {
    VCRYPT_ASSIGN_OR_RETURN(std::optional<MappingInfo> other,
                            FindMappingByUuid(uuid));
    if (other.has_value()) {
      return MakeError(ErrorCode::kBusy, device + " (LUKS UUID " + uuid +
                                             ") is already open as " +
                                             other->path + "; close it first");
    }
  }

  uint32_t flags = 0;
  if (params.discards) flags |= CRYPT_ACTIVATE_ALLOW_DISCARDS;
  bool bypass_auto = !params.bypass_workqueues.has_value();
  bool bypass = bypass_auto ? IsNonRotational(device).value_or(false)
                            : *params.bypass_workqueues;
  if (bypass) {
    flags |=
        CRYPT_ACTIVATE_NO_READ_WORKQUEUE | CRYPT_ACTIVATE_NO_WRITE_WORKQUEUE;
  }

  t_last_log.clear();
  int r = activate(cd.get(), flags);
  if (r == -EINVAL && bypass && bypass_auto) {
    // An older dm-crypt without the workqueue options: they were only a
    // performance preference here, so activate without them.
    flags &=
        ~(CRYPT_ACTIVATE_NO_READ_WORKQUEUE | CRYPT_ACTIVATE_NO_WRITE_WORKQUEUE);
    t_last_log.clear();
    r = activate(cd.get(), flags);
  }
  if (r < 0) {
    switch (r) {
      case -EPERM:
      case -ENOENT:
        return MakeError(ErrorCode::kCrypto,
                         "the key does not match volume " + device +
                             " (LUKS2 digest check failed)");
      case -EEXIST:
        return MakeError(ErrorCode::kBusy,
                         "a mapping named " + params.name + " already exists");
      case -EBUSY:
        return Fail(ErrorCode::kBusy,
                    device + " is in use (already mapped or mounted)", r);
      case -ENODEV:
      case -ENOTSUP:
        if (!DeviceMapperAvailable()) return NoDm();
        return Fail(ErrorCode::kNoDeviceMapper,
                    "cannot activate " + device +
                        " (is the dm-crypt module available?)",
                    r);
      default:
        return Fail(ErrorCode::kIo, "cannot activate " + device, r);
    }
  }
  cd.reset();  // closes libcryptsetup's loop fd: the mapping now owns it

  // With udevd running libcryptsetup waited for udev to create the node;
  // without udev libdevmapper creates it itself. Make sure either way.
  std::string path = "/dev/mapper/" + params.name;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    QuietDm();
    dm_mknodes(params.name.c_str());
  }
  for (int i = 0; i < 250 && !fs::exists(path, ec); ++i) {
    std::this_thread::sleep_for(20ms);
  }
  if (!fs::exists(path, ec)) {
    Status undo = Deactivate(params.name);
    return MakeError(
        ErrorCode::kIo,
        "activated " + params.name + " but " + path + " did not appear" +
            (undo.ok() ? "; the mapping was removed again"
                       : "; removing it failed: " + undo.error().message));
  }
  return path;
}

}  // namespace

Result<MappingInfo> QueryMapping(const std::string& name) {
  auto lib = InitLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(name));
  if (!DeviceMapperAvailable()) return NoDm();
  return QueryMappingImpl(name);
}

Result<std::vector<MappingInfo>> ListMappings(const std::string& prefix) {
  auto lib = InitLibraries();
  if (!DeviceMapperAvailable()) return NoDm();
  VCRYPT_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDmNames());
  std::vector<MappingInfo> out;
  for (const auto& n : names) {
    if (n.rfind(prefix, 0) != 0) continue;
    auto m = QueryMappingImpl(n);
    if (!m.ok()) {
      if (m.error().code == ErrorCode::kNotFound) continue;  // removed since
      return std::move(m).error();
    }
    out.push_back(std::move(m).value());
  }
  return out;
}

Result<std::optional<MappingInfo>> FindMappingByUuid(
    const std::string& luks_uuid) {
  auto lib = InitLibraries();
  std::string want = CompactUuid(luks_uuid);
  if (want.size() != 32 ||
      want.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + luks_uuid + "' is not a LUKS UUID");
  }
  if (!DeviceMapperAvailable()) return NoDm();
  VCRYPT_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDmNames());
  for (const auto& n : names) {
    VCRYPT_ASSIGN_OR_RETURN(DmInfo info, GetDmInfo(n));
    if (!info.exists) continue;
    std::string u = LuksUuidFromDmUuid(info.dm_uuid);
    if (u.empty() || CompactUuid(u) != want) continue;
    auto m = QueryMappingImpl(n);
    if (!m.ok()) {
      if (m.error().code == ErrorCode::kNotFound) continue;
      return std::move(m).error();
    }
    return std::optional<MappingInfo>(std::move(m).value());
  }
  return std::optional<MappingInfo>();
}

Status Deactivate(const std::string& name) {
  auto lib = InitLibraries();
  VCRYPT_RETURN_IF_ERROR(ValidateMappingName(name));
  if (!DeviceMapperAvailable()) return NoDm();
  VCRYPT_ASSIGN_OR_RETURN(MappingInfo m, QueryMappingImpl(name));
  if (m.dm_uuid.rfind("CRYPT-", 0) != 0) {
    // Never remove LVM volumes, multipath maps etc. by mistake.
    return MakeError(ErrorCode::kInvalidArgument,
                     name +
                         " is not a dm-crypt mapping made by "
                         "libcryptsetup; not removing it");
  }
  // udev briefly opens a new or changed device to probe it; give such a
  // transient opener a moment before calling the mapping busy.
  for (int i = 0; i < 10 && m.open_count > 0; ++i) {
    std::this_thread::sleep_for(100ms);
    VCRYPT_ASSIGN_OR_RETURN(DmInfo info, GetDmInfo(name));
    if (!info.exists) return Status::Ok();  // someone else removed it
    m.open_count = info.open_count;
  }
  auto busy = [&](int count) {
    return MakeError(ErrorCode::kBusy,
                     "/dev/mapper/" + name + " is in use (open count " +
                         std::to_string(count) +
                         "); stop whatever holds it (a mounted filesystem, a "
                         "running guest)");
  };
  if (m.open_count > 0) return busy(m.open_count);

  // Remember an auto-clear loop device under the mapping so that we can
  // wait for the kernel to release it.
  std::string loop_sys;
  if (m.backing.rfind("/dev/loop", 0) == 0) {
    std::string sys = "/sys/block/" + m.backing.substr(5);
    if (ReadSmallFile(sys + "/loop/autoclear").value_or("") == "1") {
      loop_sys = sys + "/loop/backing_file";
    }
  }

  crypt_device* raw = nullptr;
  int r = crypt_init_by_name(&raw, name.c_str());
  CryptDevicePtr cd(raw);
  if (r < 0) {
    if (r == -ENODEV) return Status::Ok();  // removed in the meantime
    return Fail(ErrorCode::kIo, "cannot open mapping " + name, r);
  }
  r = crypt_deactivate_by_name(cd.get(), name.c_str(), 0);
  if (r == -EBUSY) {
    auto info = GetDmInfo(name);
    return busy(info.ok() ? info->open_count : 1);
  }
  if (r == -ENODEV) return Status::Ok();
  if (r < 0) return Fail(ErrorCode::kIo, "cannot remove mapping " + name, r);
  cd.reset();

  if (!loop_sys.empty()) {
    std::error_code ec;
    for (int i = 0; i < 250 && fs::exists(loop_sys, ec); ++i) {
      std::this_thread::sleep_for(20ms);
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Recovery keyslot (docs/recovery.md).

namespace {

// A token of type kRecoveryTokenType and the keyslots it is bound to.
struct RecoveryMarker {
  int token_id = -1;
  std::vector<int> keyslots;
  std::string created;
};

struct RecoveryMarkers {
  std::optional<RecoveryMarker> bound;  // the one bound to a keyslot
  std::vector<int> stale;               // token ids bound to no keyslot
};

Result<RecoveryMarkers> FindRecoveryMarkers(crypt_device* cd,
                                            const std::string& device) {
  RecoveryMarkers out;
  const int max = crypt_token_max(CRYPT_LUKS2);
  for (int i = 0; i < max; ++i) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd, i, &type);
    if (info == CRYPT_TOKEN_INVALID || info == CRYPT_TOKEN_INACTIVE) continue;
    if (type == nullptr || std::string_view(type) != kRecoveryTokenType) {
      continue;
    }
    const char* text = nullptr;
    int r = crypt_token_json_get(cd, i, &text);
    if (r < 0 || text == nullptr) {
      return Fail(ErrorCode::kIo,
                  "cannot read token " + std::to_string(i) + " of " + device,
                  r);
    }
    // libcryptsetup has validated the LUKS2 part ("keyslots" is an array
    // of keyslot numbers as strings naming existing keyslots); the rest is
    // read leniently: it only says when the key was made.
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    RecoveryMarker m;
    m.token_id = i;
    if (j.is_object()) {
      auto ks = j.find("keyslots");
      if (ks != j.end() && ks->is_array()) {
        for (const auto& k : *ks) {
          if (!k.is_string()) continue;
          const std::string n = k.get<std::string>();
          if (n.empty() || n.size() > 3 ||
              n.find_first_not_of("0123456789") != std::string::npos) {
            continue;
          }
          m.keyslots.push_back(std::stoi(n));
        }
      }
      auto c = j.find("created");
      if (c != j.end() && c->is_string()) m.created = c->get<std::string>();
    }
    const std::string what = "token " + std::to_string(i) + " (" +
                             std::string(kRecoveryTokenType) + ") of " + device;
    if (m.keyslots.empty()) {
      out.stale.push_back(i);
      continue;
    }
    if (m.keyslots.size() > 1) {
      return MakeError(ErrorCode::kInvalidVolume,
                       what + " is bound to " +
                           std::to_string(m.keyslots.size()) +
                           " keyslots; vcrypt binds it to one");
    }
    crypt_keyslot_info ki = crypt_keyslot_status(cd, m.keyslots[0]);
    if (ki != CRYPT_SLOT_ACTIVE && ki != CRYPT_SLOT_ACTIVE_LAST) {
      return MakeError(ErrorCode::kInvalidVolume,
                       what + " is bound to keyslot " +
                           std::to_string(m.keyslots[0]) +
                           ", which is not an active keyslot");
    }
    if (out.bound) {
      return MakeError(ErrorCode::kInvalidVolume,
                       device + " has more than one recovery keyslot marker "
                                "(tokens " +
                           std::to_string(out.bound->token_id) + " and " +
                           std::to_string(i) + "); vcrypt makes one");
    }
    out.bound = std::move(m);
  }
  return out;
}

RecoveryKeyslot DescribeRecoveryKeyslot(crypt_device* cd,
                                        const RecoveryMarker& m) {
  RecoveryKeyslot k;
  k.keyslot = m.keyslots.at(0);
  k.token_id = m.token_id;
  k.created = m.created;
  struct crypt_pbkdf_type p = {};
  if (crypt_keyslot_get_pbkdf(cd, k.keyslot, &p) == 0) {
    k.pbkdf = p.type != nullptr ? p.type : "";
    k.iterations = p.iterations;
    k.memory_kib = p.max_memory_kb;
    k.threads = p.parallel_threads;
  }
  return k;
}

std::vector<bool> ActiveKeyslots(crypt_device* cd) {
  std::vector<bool> active(static_cast<size_t>(crypt_keyslot_max(CRYPT_LUKS2)));
  for (size_t i = 0; i < active.size(); ++i) {
    crypt_keyslot_info ki = crypt_keyslot_status(cd, static_cast<int>(i));
    active[i] = ki != CRYPT_SLOT_INACTIVE && ki != CRYPT_SLOT_INVALID;
  }
  return active;
}

// Undoes a recovery keyslot add that did not complete: from a freshly read
// header, destroys every keyslot that was not active before (while the
// caller holds the volume, only the one being added can be new) and the
// marker `token_id` (-1: none was written). Returns "" or what failed, to
// be appended to the original error.
std::string UndoRecoveryAdd(const std::string& device,
                            const std::vector<bool>& active_before,
                            int token_id) {
  auto cd = InitCrypt(device);
  if (!cd.ok()) return "; undoing it failed: " + cd.error().message;
  if (Status st = LoadLuks2(cd->get(), device); !st.ok()) {
    return "; undoing it failed: " + st.error().message;
  }
  std::string note;
  if (token_id >= 0) {
    const char* type = nullptr;
    crypt_token_info info = crypt_token_status(cd->get(), token_id, &type);
    if (info != CRYPT_TOKEN_INACTIVE && info != CRYPT_TOKEN_INVALID &&
        type != nullptr && std::string_view(type) == kRecoveryTokenType) {
      int r = crypt_token_json_set(cd->get(), token_id, nullptr);
      if (r < 0) {
        note += "; deleting its marker (token " + std::to_string(token_id) +
                ") failed: " + ErrnoText(r);
      }
    }
  }
  std::vector<bool> now = ActiveKeyslots(cd->get());
  for (size_t i = 0; i < now.size(); ++i) {
    if (!now[i] || (i < active_before.size() && active_before[i])) continue;
    int r = crypt_keyslot_destroy(cd->get(), static_cast<int>(i));
    if (r < 0) {
      note += "; destroying the new keyslot " + std::to_string(i) +
              " failed: " + ErrnoText(r) + " (remove it with 'cryptsetup "
              "luksKillSlot " + device + " " + std::to_string(i) + "')";
    }
  }
  return note;
}

// The memory (KiB) a keyslot with libcryptsetup's default LUKS2 PBKDF may
// use on this host: the default's max_memory_kb, capped at half of the
// physical memory as libcryptsetup caps it (adjusted_phys_memory() in its
// utils_pbkdf.c, which ignores totals under 128 MiB). 0 for a PBKDF
// without a memory cost (PBKDF2 in FIPS mode).
uint64_t DefaultPbkdfMemoryKib() {
  const crypt_pbkdf_type* d = crypt_get_pbkdf_default(CRYPT_LUKS2);
  uint64_t kib = d != nullptr ? d->max_memory_kb : 0;
  long pages = sysconf(_SC_PHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) {
    uint64_t phys = static_cast<uint64_t>(pages) *
                    static_cast<uint64_t>(page) / 1024;
    if (phys >= (128u << 10) && phys / 2 < kib) kib = phys / 2;
  }
  return kib;
}

// MemAvailable from /proc/meminfo, in KiB; nullopt when unknown.
std::optional<uint64_t> MemAvailableKib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value;
  }
  return std::nullopt;
}

std::string Mib(uint64_t kib) { return std::to_string((kib + 1023) / 1024); }

}  // namespace

Result<RecoveryState> ReadRecoveryKeyslot(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = InitLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2(device));
  RecoveryState state;
  const char* uuid = crypt_get_uuid(cd.get());
  state.uuid = uuid != nullptr ? uuid : "";
  VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers markers,
                          FindRecoveryMarkers(cd.get(), device));
  if (markers.bound) {
    state.slot = DescribeRecoveryKeyslot(cd.get(), *markers.bound);
  }
  return state;
}

Result<RecoveryKeyslot> AddRecoveryKeyslot(const std::string& device,
                                           const SecureBuffer& dek,
                                           const SecureBuffer& passphrase,
                                           const std::string& created) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = InitLibraries();
  if (dek.size() != kDekSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the DEK must be " + std::to_string(kDekSize) +
                         " bytes, not " + std::to_string(dek.size()));
  }
  if (passphrase.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "the recovery passphrase is empty");
  }
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2(device));
  VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers markers,
                          FindRecoveryMarkers(cd.get(), device));
  if (markers.bound) {
    return MakeError(ErrorCode::kExists,
                     device + " already has a recovery keyslot (keyslot " +
                         std::to_string(markers.bound->keyslots[0]) + ")");
  }

  // argon2id allocates its whole memory cost at once and, with no swap,
  // the kernel meets an overcommitted 1 GiB by OOM-killing someone: on a
  // KVM host that may be a guest. Refuse before writing anything when the
  // memory is plainly not there.
  const uint64_t need = DefaultPbkdfMemoryKib();
  const std::optional<uint64_t> avail = MemAvailableKib();
  if (need > 0 && avail && *avail < need) {
    return MakeError(ErrorCode::kInternal,
                     "not enough memory to add a recovery keyslot to " +
                         device + ": argon2id may use " + Mib(need) +
                         " MiB and " + Mib(*avail) +
                         " MiB are available; retry when memory is free");
  }

  for (int id : markers.stale) {
    int r = crypt_token_json_set(cd.get(), id, nullptr);
    if (r < 0) {
      return Fail(ErrorCode::kIo,
                  "cannot delete the unbound recovery marker (token " +
                      std::to_string(id) + ") of " + device,
                  r);
    }
  }

  const std::vector<bool> before = ActiveKeyslots(cd.get());
  int r = crypt_set_pbkdf_type(cd.get(), crypt_get_pbkdf_default(CRYPT_LUKS2));
  if (r < 0) {
    return Fail(ErrorCode::kIo, "cannot select the default LUKS2 PBKDF", r);
  }
  t_last_log.clear();
  const int slot =
      crypt_keyslot_add_by_volume_key(cd.get(), CRYPT_ANY_SLOT, dek.chars(),
                                      dek.size(), passphrase.chars(),
                                      passphrase.size());
  if (slot < 0) {
    Error e = [&] {
      const std::string what = "cannot add a recovery keyslot to " + device;
      switch (slot) {
        case -EPERM:
          return MakeError(ErrorCode::kCrypto,
                           what + ": the DEK does not match its LUKS2 digest");
        case -ENOMEM:
          // libcryptsetup's own message here ("Not compatible PBKDF
          // options") would mislead.
          return MakeError(ErrorCode::kInternal,
                           what + ": not enough memory for argon2id (up to " +
                               Mib(need) +
                               " MiB); retry when memory is free");
        default:
          return Fail(ErrorCode::kIo, what, slot);
      }
    }();
    cd.reset();
    e.message += UndoRecoveryAdd(device, before, -1);
    return e;
  }

  nlohmann::json marker = {
      {"type", std::string(kRecoveryTokenType)},
      {"keyslots", nlohmann::json::array({std::to_string(slot)})},
      {"vcrypt_recovery_version", 1},
      {"created", created}};
  t_last_log.clear();
  const int token_id =
      crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN, marker.dump().c_str());
  if (token_id < 0) {
    Error e = Fail(ErrorCode::kIo,
                   "cannot write the recovery keyslot marker to " + device,
                   token_id);
    cd.reset();
    e.message += UndoRecoveryAdd(device, before, -1);
    return e;
  }
  cd.reset();

  // Read back: the header on disk has the marked keyslot, and it opens
  // with the passphrase (the derivation again, from the stored salt and
  // costs). A recovery key that does not work would be found out only
  // when it is needed.
  auto check = [&]() -> Result<RecoveryKeyslot> {
    VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr c, InitCrypt(device));
    VCRYPT_RETURN_IF_ERROR(LoadLuks2(c.get(), device));
    VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers now,
                            FindRecoveryMarkers(c.get(), device));
    if (!now.bound || now.bound->keyslots[0] != slot ||
        now.bound->token_id != token_id) {
      return MakeError(ErrorCode::kIo, "the recovery keyslot of " + device +
                                           " does not read back");
    }
    t_last_log.clear();
    int opened = crypt_activate_by_passphrase(
        c.get(), nullptr, slot, passphrase.chars(), passphrase.size(), 0);
    if (opened != slot) {
      return MakeError(ErrorCode::kIo,
                       WithLibMessage("the new recovery keyslot " +
                                      std::to_string(slot) + " of " + device +
                                      " does not open with its key"));
    }
    return DescribeRecoveryKeyslot(c.get(), *now.bound);
  };
  auto added = check();
  if (!added.ok()) {
    Error e = std::move(added).error();
    e.message += UndoRecoveryAdd(device, before, token_id);
    return e;
  }
  return added;
}

Result<RecoveryKeyslot> RemoveRecoveryKeyslot(const std::string& device) {
  // Never wait for a hung device under the process-wide lock.
  VCRYPT_RETURN_IF_ERROR(CheckResponsive(device));
  auto lib = InitLibraries();
  VCRYPT_ASSIGN_OR_RETURN(CryptDevicePtr cd, OpenLuks2(device));
  VCRYPT_ASSIGN_OR_RETURN(RecoveryMarkers markers,
                          FindRecoveryMarkers(cd.get(), device));
  if (!markers.bound) {
    return MakeError(ErrorCode::kNotFound,
                     device + " has no recovery keyslot");
  }
  RecoveryKeyslot k = DescribeRecoveryKeyslot(cd.get(), *markers.bound);
  // The keyslot first: stopping between the two writes then leaves an
  // unbound marker (no recovery key), never a working keyslot that vcrypt
  // no longer shows.
  t_last_log.clear();
  int r = crypt_keyslot_destroy(cd.get(), k.keyslot);
  if (r < 0) {
    return Fail(ErrorCode::kIo,
                "cannot destroy the recovery keyslot " +
                    std::to_string(k.keyslot) + " of " + device,
                r);
  }
  t_last_log.clear();
  r = crypt_token_json_set(cd.get(), k.token_id, nullptr);
  if (r < 0) {
    return Fail(ErrorCode::kIo,
                "destroyed the recovery keyslot " + std::to_string(k.keyslot) +
                    " of " + device + " but cannot delete its marker (token " +
                    std::to_string(k.token_id) +
                    "), which now counts as no recovery key",
                r);
  }
  return k;
}

// ---------------------------------------------------------------------------
// What the other files of this library share (dmtools/lib_internal.h).

namespace dmlib {

LibLock LockLibraries() { return InitLibraries(); }

Result<CryptDevicePtr> OpenLuks2Device(const std::string& device) {
  return OpenLuks2(device);
}

Error LibFail(ErrorCode code, const std::string& what, int r) {
  return Fail(code, what, r);
}

void ClearLibMessage() { t_last_log.clear(); }

}  // namespace dmlib

}  // namespace vcrypt
