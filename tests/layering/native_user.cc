// Compiled against vcrypt_keyproviders (tests/layering/CMakeLists.txt). The
// native provider seals its primary key with keyproviders/tpm/ (linked
// PRIVATE), so its users do not see tpm2-tss: with
// VCRYPT_LAYERING_FORBIDDEN this file must fail to compile.
#include "keyproviders/key_provider.h"
#include "keyproviders/native/native_provider.h"

#ifdef VCRYPT_LAYERING_FORBIDDEN
#include "keyproviders/tpm/seal.h"
#endif
