// Compiled against vcrypt_probe (tests/layering/CMakeLists.txt), the
// library of the udev probe vcrypt-probe. It must not see dmtools' main
// header: the probe links neither libcryptsetup nor libdevmapper (that is
// what makes it fast, probe/probe.h), so with VCRYPT_LAYERING_FORBIDDEN
// this file must fail to compile.
#include "dmtools/layout.h"
#include "dmtools/token.h"
#include "probe/probe.h"

#ifdef VCRYPT_LAYERING_FORBIDDEN
#include "dmtools/volume.h"
#endif
