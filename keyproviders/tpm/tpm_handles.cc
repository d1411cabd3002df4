// Deleters of the tpm2-tss owners declared in common/handles.h.
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include "common/handles.h"

namespace vcrypt {

void EsysContextDeleter::operator()(ESYS_CONTEXT* ctx) const {
  ESYS_CONTEXT* c = ctx;
  Esys_Finalize(&c);
}

void TctiContextDeleter::operator()(TSS2_TCTI_OPAQUE_CONTEXT_BLOB* tcti) const {
  Tss2_TctiLdr_Finalize(&tcti);
}

void EsysFreeDeleter::operator()(void* p) const { Esys_Free(p); }

}  // namespace vcrypt
