// Compiled against vcrypt_tpm (tests/layering/CMakeLists.txt), the host's
// TPM library under both the native and the trusted provider. It is below
// them: with VCRYPT_LAYERING_FORBIDDEN this file must fail to compile.
#include "keyproviders/tpm/seal.h"
#include "keyproviders/tpm/tpm_context.h"

#ifdef VCRYPT_LAYERING_FORBIDDEN
#include "keyproviders/key_provider.h"
#endif
