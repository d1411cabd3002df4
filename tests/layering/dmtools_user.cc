// Compiled against vcrypt_dmtools (tests/layering/CMakeLists.txt). Its
// public headers are visible to a user of the library; its internal header
// is not (dmtools/CMakeLists.txt), so with VCRYPT_LAYERING_FORBIDDEN this
// file must fail to compile.
#include "dmtools/reencrypt.h"
#include "dmtools/stacking.h"
#include "dmtools/volume.h"

#ifdef VCRYPT_LAYERING_FORBIDDEN
#include "dmtools/lib_internal.h"
#endif
