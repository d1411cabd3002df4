// Compiled against vcrypt_trusted, the host side of the trusted key provider
// (tests/layering/CMakeLists.txt). The host may include the protocol it
// shares with the Trust Authority (taprotocol/); the Trust Authority's own
// folder is not visible to it, so with VCRYPT_LAYERING_FORBIDDEN this file
// must fail to compile.
#include "keyproviders/trusted/trusted_provider.h"
#include "taprotocol/jws.h"
#include "taprotocol/proof.h"
#include "taprotocol/transport.h"

#ifdef VCRYPT_LAYERING_FORBIDDEN
#include "trustauthority/attestation.h"
#endif
