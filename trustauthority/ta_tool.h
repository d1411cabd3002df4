// vcrypt-ta: the Trust Authority's program (docs/trusted-admin.md), as a
// library so the tests drive exactly what the binary runs. The binary
// (vcrypt_ta_main.cc) only wires signals to a ServiceControl.
//
//   vcrypt-ta admin --state DIR init [--pcrs sha256:0,1,...]
//   vcrypt-ta admin --state DIR tpm-ca add FILE
//   vcrypt-ta admin --state DIR host add NAME [--ek-pub FILE]
//                                 | host remove NAME
//   vcrypt-ta admin --state DIR baseline add NAME (--values F | --policy F)
//                                          [--expires-in DURATION]
//                                 | baseline remove NAME
//                                 | baseline policy-from-log --log FILE
//   vcrypt-ta admin --state DIR list [--json]
//   vcrypt-ta admin primary-key create --kms H:P[,..] --kms-ca F
//                                      --kms-cert F --kms-key F [--name N]
//   vcrypt-ta attestation-service --state DIR --listen HOST:PORT
//                                 --tls-cert F --tls-key F
//   vcrypt-ta key-provider-service --state DIR --listen HOST:PORT
//                                  --tls-cert F --tls-key F --provider-id ID
//       (--primary-key UID --kms .. --kms-ca F --kms-cert F --kms-key F
//        | --primary-key-file F)
//
// Contract of RunTaTool: results on `out`; an error is exactly one line
// "vcrypt-ta: <message>" on `err` and the return value is the ErrorCode's
// number (2 for usage errors; see docs/trusted-admin.md, "Exit codes").
// A failing admin command leaves the state directory as it was. A service
// command prints "listening on HOST:PORT" (the bound port, also for port 0)
// once it accepts connections, serves until ServiceControl::Stop(), and
// then returns 0. No key material reaches `out`, `err` or any std::string:
// the token signing key and the primary key are read into SecureBuffer.
#ifndef VCRYPT_TRUSTAUTHORITY_TA_TOOL_H_
#define VCRYPT_TRUSTAUTHORITY_TA_TOOL_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "trustauthority/quote.h"

namespace vcrypt {

class KmsCluster;

// Stops a running service command from another thread: the binary's
// signal thread (SIGTERM/SIGINT), or a test. Thread-safe.
class ServiceControl {
 public:
  // Idempotent. A Stop() that comes before the server is up still stops it
  // (the service returns as soon as it is).
  void Stop();
  // Called (on the service's thread) right after "listening on ..." was
  // printed, with the "HOST:PORT" printed. Set before RunTaTool.
  std::function<void(const std::string& address)> on_listening;

  // For the service loop: blocks until Stop() or `done()` is true
  // (checked whenever Notify() is called).
  void WaitUntil(const std::function<bool()>& done);
  void Notify();
  bool stopped();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
};

int RunTaTool(int argc, const char* const* argv, std::ostream& out,
              std::ostream& err, ServiceControl* control = nullptr);

// --- pieces exposed for tests ---

// "sha256:0,1,2,3,4,5,6,7" (also ranges: "sha256:0-7"). Only the sha256
// bank (baselines hold 32-byte values); PCR indexes 0-23, each at most
// once; returned ascending. kInvalidArgument otherwise.
Result<PcrSelection> ParsePcrSelection(std::string_view text);
std::string FormatPcrSelection(const PcrSelection& selection);

// A baseline values file: one hex digest (either case) per line, in the
// selection's PCR order; blank lines and lines starting with '#' are
// skipped. Exactly selection.pcrs.size() values of 32 bytes each, else
// kInvalidArgument naming the line.
Result<std::vector<std::vector<uint8_t>>> ParseBaselineValues(
    std::string_view text, const PcrSelection& selection);

// "HOST:PORT" / "[V6]:PORT" to listen on; port 0 means any free port.
struct ListenAddress {
  std::string host;  // without brackets
  uint16_t port = 0;
};
Result<ListenAddress> ParseListenAddress(std::string_view text);

// An EK public key file for `admin host add --ek-pub`: the TPM2B_PUBLIC
// wire bytes (what Tpm::EkPublic() returns and `tpm2_createek -u FILE`
// writes in its default "tss" format) or a bare TPMT_PUBLIC
// (`tpm2_createek -f tpmt`), which gets its size prefix. Returns the
// TPM2B_PUBLIC bytes; kInvalidArgument when neither parses.
Result<std::vector<uint8_t>> NormalizeEkPublic(std::vector<uint8_t> bytes);

// Reads a file holding a secret straight into locked memory. Refuses
// (kPermissionDenied) a file with any group or other permission bit, or
// not a regular file; kNotFound when missing.
Result<SecureBuffer> ReadOwnerOnlyFile(const std::string& path,
                                       const std::string& what,
                                       size_t max_size);

// KMIP through the standard provider's cluster client: Get of the primary
// key (AES-256, exactly 32 bytes) by its Unique Identifier, and Create +
// Activate of a new one (returning its UID; a key that could not be
// activated and read back is revoked and destroyed again).
Result<SecureBuffer> FetchPrimaryKey(KmsCluster& cluster,
                                     const std::string& uid);
Result<std::string> CreatePrimaryKey(KmsCluster& cluster,
                                     const std::string& name);

}  // namespace vcrypt

#endif  // VCRYPT_TRUSTAUTHORITY_TA_TOOL_H_
