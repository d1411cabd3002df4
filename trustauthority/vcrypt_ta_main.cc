// vcrypt-ta: a thin main over trustauthority/ta_tool.h.
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>

#include <cstring>
#include <iostream>
#include <thread>

#include "common/openssl_secure_heap.h"
#include "trustauthority/ta_tool.h"

namespace {
// Never destroyed: the detached signal thread may still touch it while
// main returns. Held by a global so that it stays reachable (LeakSanitizer
// does not count it as a leak).
vcrypt::ServiceControl* g_control = nullptr;
}  // namespace

int main(int argc, char** argv) {
  // The services hold the token signing key or the primary key: no core
  // dumps, no ptrace by other processes of the same user.
  prctl(PR_SET_DUMPABLE, 0);
  // A client that goes away mid-reply must not kill the service.
  signal(SIGPIPE, SIG_IGN);
  // Before any key is loaded: OpenSSL keeps the private keys it holds (the
  // token signing key, host keys) in its secure heap.
  // Exit 4, as for other memory that cannot be locked (trusted-admin.md).
  if (auto st = vcrypt::InitOpensslSecureHeap(); !st.ok()) {
    std::cerr << "vcrypt-ta: " << st.error().message << std::endl;
    return static_cast<int>(vcrypt::ErrorCode::kPermissionDenied);
  }

  g_control = new vcrypt::ServiceControl;
  vcrypt::ServiceControl& control = *g_control;
  const bool service =
      argc >= 2 && (std::strcmp(argv[1], "attestation-service") == 0 ||
                    std::strcmp(argv[1], "key-provider-service") == 0);
  if (service) {
    // SIGTERM/SIGINT are taken by one thread with sigwait rather than a
    // handler: stopping the server is not async-signal-safe. Blocked here,
    // before any other thread exists, so every thread inherits the mask.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread([set, &control] {
      int sig = 0;
      while (sigwait(&set, &sig) == 0) control.Stop();
    }).detach();
  }
  return vcrypt::RunTaTool(argc, argv, std::cout, std::cerr, &control);
}
