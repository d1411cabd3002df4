// The process-wide setup of libcryptsetup and libdevmapper, the one lock
// every call into them is made under (volume.h), and the capture of their
// error messages. The rest of the library reaches these through
// dmtools/lib_internal.h.
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "dmtools/lib_internal.h"
#include "dmtools/volume.h"

namespace vcrypt {
namespace {

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

}  // namespace

namespace dmlib {

// Takes the library lock and sets up the libraries; hold the result for
// as long as any libcryptsetup/libdevmapper handle is alive.
[[nodiscard]] LibLock LockLibraries() {
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

Error LibFail(ErrorCode code, const std::string& what, int r) {
  return MakeError(code, WithLibMessage(what + ": " + ErrnoText(r)));
}

void ClearLibMessage() { t_last_log.clear(); }

Error NoDm() {
  return MakeError(ErrorCode::kNoDeviceMapper,
                   "device-mapper not available in this kernel (no "
                   "/dev/mapper/control or the dm driver does not answer); "
                   "load the dm-mod and dm-crypt modules");
}

}  // namespace dmlib

bool DeviceMapperAvailable() {
  // Without the control node libdevmapper would try to mknod it, and on a
  // kernel without dm it would then log to stderr; check the node first.
  if (access("/dev/mapper/control", F_OK) != 0) return false;
  dmlib::LibLock lock(g_lib_mu);
  dmlib::QuietDm();
  char version[64];
  return dm_driver_version(version, sizeof(version)) != 0;
}

}  // namespace vcrypt
