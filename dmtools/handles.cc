// Deleters for the libcryptsetup / libdevmapper handles declared in
// common/handles.h. They live here because only vcrypt_dmtools links those
// libraries.
#include "common/handles.h"

#include <libcryptsetup.h>
#include <libdevmapper.h>

namespace vcrypt {

// crypt_free also wipes the volume key libcryptsetup may hold and closes
// the loop-device fd it opened (which lets an auto-clear loop go away).
void CryptDeviceDeleter::operator()(crypt_device* cd) const {
  if (cd != nullptr) crypt_free(cd);
}

void DmTaskDeleter::operator()(dm_task* t) const {
  if (t != nullptr) dm_task_destroy(t);
}

}  // namespace vcrypt
