#include "daemon/daemon_main.h"

#include <cstring>

#include "daemon/reencrypt_helper.h"

int main(int argc, char** argv) {
  // vcryptd re-executes itself for a deep rekey (daemon/reencrypt_helper.h).
  if (argc == 2 && std::strcmp(argv[1], "--reencrypt-helper") == 0)
    return vcrypt::ReencryptHelperMain();
  return vcrypt::DaemonMain(argc, argv);
}
