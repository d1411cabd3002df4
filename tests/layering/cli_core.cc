// Compiled against vcrypt_cli_lib (tests/layering/CMakeLists.txt), the
// library vcryptctl is built from. It must not see libvirt/: vcryptctl
// does not link libvirt (cli/attach.h), so with VCRYPT_LAYERING_FORBIDDEN
// this file must fail to compile.
#include "cli/cli.h"
#include "client/client.h"

#ifdef VCRYPT_LAYERING_FORBIDDEN
#include "libvirt/attach.h"
#endif
