#include "keyproviders/tpm/tpm_context.h"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <cctype>
#include <cstdlib>
#include <string_view>
#include <utility>

#include "common/escape.h"

namespace vcrypt {

Error TpmRcError(const std::string& what, uint32_t rc) {
  const char* text = Tss2_RC_Decode(rc);
  return MakeError(ErrorCode::kIo,
                   "TPM: " + what + " failed (" +
                       std::string(text != nullptr ? text : "?") + ")");
}

Status CheckTcti(const std::string& tcti, bool allow_test) {
  auto refuse = [&] {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "TCTI '" + EscapeForMessage(tcti) +
            "' is not allowed: use device:/dev/tpmrm0 " +
            "or another /dev/tpm* node" +
            (allow_test
                 ? std::string(", swtpm:host=H,port=P or mssim:host=H,port=P")
                 : std::string(" (simulator TCTIs only when vcryptd's "
                               "config sets allow_test_tcti)")));
  };
  const size_t colon = tcti.find(':');
  const std::string module = tcti.substr(0, colon);
  const std::string conf =
      colon == std::string::npos ? std::string() : tcti.substr(colon + 1);
  if (module == "device") {
    // /dev/tpm<digits> or /dev/tpmrm<digits>, nothing else.
    std::string_view rest(conf);
    if (rest.substr(0, 8) != "/dev/tpm") return refuse();
    rest.remove_prefix(8);
    if (rest.substr(0, 2) == "rm") rest.remove_prefix(2);
    if (rest.empty() || rest.size() > 4) return refuse();
    for (char c : rest)
      if (c < '0' || c > '9') return refuse();
    return Status::Ok();
  }
  if (!allow_test || (module != "swtpm" && module != "mssim")) return refuse();
  for (char c : conf)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' &&
        c != '_' && c != '=' && c != ',')
      return refuse();
  return Status::Ok();
}

Result<TpmContext> OpenTpmContext(const std::string& tcti) {
  // Never a path or an unknown module, whatever the caller checked.
  VCRYPT_RETURN_IF_ERROR(CheckTcti(tcti, /*allow_test=*/true));
  // tpm2-tss logs its errors to stderr; libraries here do not print (the
  // error comes back as a value). An explicit TSS2_LOG still wins.
  setenv("TSS2_LOG", "all+NONE", 0);
  TpmContext ctx;
  TSS2_TCTI_CONTEXT* raw_tcti = nullptr;
  TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti.c_str(), &raw_tcti);
  if (rc != TSS2_RC_SUCCESS)
    return TpmRcError("opening TCTI '" + tcti + "'", rc);
  ctx.tcti.reset(raw_tcti);
  ESYS_CONTEXT* raw_esys = nullptr;
  rc = Esys_Initialize(&raw_esys, ctx.tcti.get(), nullptr);
  if (rc != TSS2_RC_SUCCESS) return TpmRcError("initialising ESAPI", rc);
  ctx.esys.reset(raw_esys);
  return ctx;
}

}  // namespace vcrypt
