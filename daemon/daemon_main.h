// vcryptd's program logic, kept in the library so tests can drive it.
#ifndef VCRYPT_DAEMON_DAEMON_MAIN_H_
#define VCRYPT_DAEMON_DAEMON_MAIN_H_

namespace vcrypt {

// Parses arguments, loads state, hardens the process and serves until
// SIGTERM/SIGINT. Returns the process exit code (the ErrorCode values, as
// for vcryptctl).
int DaemonMain(int argc, char** argv);

}  // namespace vcrypt

#endif  // VCRYPT_DAEMON_DAEMON_MAIN_H_
