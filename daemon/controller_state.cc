#include "daemon/controller_state.h"

namespace vcrypt {

ControllerState::ControllerState(ControllerOptions options, StateDirLock lock,
                                 StateStore store)
    : options(std::move(options)),
      dir_lock(std::move(lock)),
      store(std::move(store)),
      held_closed(this->store.dir() + "/held-closed") {}

std::shared_ptr<KeyProvider> ControllerState::FindProvider(
    const std::string& name) {
  std::lock_guard lock(mu);
  auto it = providers.find(name);
  return it == providers.end() ? nullptr : it->second;
}

Result<VmRecord> ControllerState::FindVm(const std::string& vm) {
  std::lock_guard lock(mu);
  auto it = store.vms().find(vm);
  if (it == store.vms().end())
    return MakeError(ErrorCode::kNotFound, "no VM named '" + vm + "'");
  return it->second;
}

}  // namespace vcrypt
