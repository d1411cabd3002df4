// Compiled against vcrypt_libvirt (tests/layering/CMakeLists.txt). libvirt/
// talks to vcryptd through client/; the CLI above it is not visible, so with
// VCRYPT_LAYERING_FORBIDDEN this file must fail to compile.
#include "client/client.h"
#include "libvirt/volumes.h"

#ifdef VCRYPT_LAYERING_FORBIDDEN
#include "cli/cli.h"
#endif
