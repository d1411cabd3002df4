// What every user of the host's TPM 2.0 shares: the TCTI allowlist and an
// ESAPI context on a checked TCTI. The trusted provider's attestation
// (keyproviders/trusted/tpm.h) and the native provider's sealed primary
// key (keyproviders/tpm/seal.h) both open the TPM through here, so there
// is one place that decides which TCTI module tpm2-tss may load.
#ifndef VCRYPT_KEYPROVIDERS_TPM_TPM_CONTEXT_H_
#define VCRYPT_KEYPROVIDERS_TPM_TPM_CONTEXT_H_

#include <cstdint>
#include <string>

#include "common/handles.h"
#include "common/result.h"

namespace vcrypt {

// The kernel's TPM resource manager: what a provider uses unless told
// otherwise.
inline constexpr const char* kDefaultTcti = "device:/dev/tpmrm0";

// Whether `tcti` may be handed to tpm2-tss. Its loader dlopen()s the
// module part of "module:conf" (a name with '/' as a path, else
// libtss2-tcti-<module>.so), so the string decides which code runs inside
// vcryptd: it must never come unchecked from a caller or a file.
// Allowed: "device:/dev/tpmrmN" and "device:/dev/tpmN" (N digits); with
// `allow_test` also "swtpm" and "mssim" with an optional conf of
// "key=value" options made of [A-Za-z0-9._-] (host=...,port=...).
// kInvalidArgument, one line saying what is allowed, otherwise.
Status CheckTcti(const std::string& tcti, bool allow_test);

// An ESAPI context and the TCTI under it. The ESAPI context is finalised
// before the TCTI it uses (members are destroyed in reverse order).
struct TpmContext {
  TctiContextPtr tcti;
  EsysContextPtr esys;
};

// Loads the TCTI `tcti` and initialises ESAPI on it. `tcti` must pass
// CheckTcti(tcti, /*allow_test=*/true), whatever the caller checked
// (nothing is loaded otherwise); callers apply their own, stricter policy
// first. Sets TSS2_LOG to "all+NONE" unless the environment sets it:
// tpm2-tss would print its errors on stderr, and libraries here return
// them as values. kIo when the TCTI cannot be loaded or the TPM does not
// answer.
Result<TpmContext> OpenTpmContext(const std::string& tcti);

// kIo "TPM: <what> failed (<tpm2-tss's decoding of rc>)".
Error TpmRcError(const std::string& what, uint32_t rc);

}  // namespace vcrypt

#endif  // VCRYPT_KEYPROVIDERS_TPM_TPM_CONTEXT_H_
